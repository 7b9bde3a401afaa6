"""The error hierarchy: stable codes, default messages from docstrings, details kept."""

from __future__ import annotations

import pytest

from alice_spool import errors


def all_errors() -> list[type[errors.SpoolError]]:
    found, todo = [], [errors.SpoolError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("cls", all_errors(), ids=lambda c: c.__name__)
def test_every_error_has_a_code_and_a_default_message(cls: type[errors.SpoolError]) -> None:
    assert cls.code and cls.code == cls.code.lower() and " " not in cls.code
    error = cls()
    assert error.message == cls.__doc__.strip().splitlines()[0]
    assert str(error) == error.message
    assert error.to_dict() == {"code": cls.code, "message": error.message}


def test_the_codes_clients_rely_on() -> None:
    # Public: HTTP error bodies, CLI messages and a failed job's error_code use them.
    codes = {cls.code for cls in all_errors()}
    expected = {
        "model_not_found",
        "lora_not_found",
        "invalid_parameters",
        "queue_full",
        "gpu_out_of_memory",
        "generation_failed",
        "timeout",
        "not_found",
        "attempts_exhausted",
        "idempotency_conflict",
        "invalid_state",
        "config_invalid",
        "database_error",
    }
    assert expected <= codes


def test_details_are_kept_and_none_dropped() -> None:
    error = errors.InvalidParameters("steps must be between 1 and 150", field="steps", line=3)
    assert error.field == "steps"
    assert error.to_dict() == {
        "code": "invalid_parameters",
        "message": "steps must be between 1 and 150",
        "field": "steps",
        "line": 3,
    }
    assert errors.JobNotFound("no job x", job_id=None).to_dict() == {
        "code": "not_found",
        "message": "no job x",
    }


def test_a_stored_code_becomes_its_own_class() -> None:
    timeout = errors.from_code("timeout", "ran too long", job_id="j")
    assert type(timeout) is errors.JobTimeout and timeout.to_dict() == {
        "code": "timeout",
        "message": "ran too long",
        "job_id": "j",
    }
    assert type(errors.from_code("model_not_found", "gone")) is errors.ModelNotFound
    unknown = errors.from_code("from_a_future_version", "?")
    assert type(unknown) is errors.GenerationFailed and unknown.code == "generation_failed"
    assert type(errors.from_code(None, "?")) is errors.GenerationFailed
