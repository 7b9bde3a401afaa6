"""Every error has its HTTP status, decided per class: a new `SpoolError` without one
fails here instead of reaching a client as whatever a default would say."""

from __future__ import annotations

import inspect

import pytest

from alice_spool import errors
from alice_spool.api.dialects import gtx1060, restplan
from alice_spool.api.edge.errors import STATUS, retry_headers, spool_error_response, status_of


def _error_classes() -> list[type[errors.SpoolError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.SpoolError) and cls.__module__ == errors.__name__
    ]


def test_every_error_class_has_a_status_of_its_own() -> None:
    classes = _error_classes()
    assert len(classes) > 40  # the walk found the module's classes
    missing = [cls.__name__ for cls in classes if cls not in STATUS]
    assert missing == []
    assert all(400 <= STATUS[cls] <= 599 for cls in classes)


def test_the_map_names_only_error_classes() -> None:
    assert all(issubclass(cls, errors.SpoolError) for cls in STATUS)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.InvalidParameters("bad"), 400),
        (errors.BatchTooLarge("too many"), 413),  # its own, not its parent's 400
        (errors.VaeNotFound("no such vae"), 404),
        (errors.QueueFull(), 503),
        (errors.DatabaseFull(), 503),
        (errors.DatabaseNotMigrated(), 500),
        (errors.JobTimeout(), 504),
        (errors.Unauthorized(), 401),
    ],
)
def test_status_of_an_error(error: errors.SpoolError, status: int) -> None:
    assert status_of(error) == status
    assert spool_error_response(error).status_code == status


def test_a_subclass_without_an_entry_takes_its_parents() -> None:
    class Narrower(errors.ModelNotFound):
        pass

    assert status_of(Narrower("gone")) == 404


def test_a_dialects_overrides_apply_at_their_class_only() -> None:
    # The REST plan answers a bad parameter with 422, as FastAPI does; a batch too large
    # (a kind of bad parameter with its own status) stays 413.
    assert status_of(errors.InvalidParameters("bad"), restplan.RESTPLAN.statuses) == 422
    assert status_of(errors.BatchTooLarge("too many"), restplan.RESTPLAN.statuses) == 413
    assert status_of(errors.ModelNotFound("none"), gtx1060.GTX1060.statuses) == 503
    assert status_of(errors.ModelNotFound("none"), restplan.RESTPLAN.statuses) == 404


def test_retry_after_for_the_refusals_that_pass() -> None:
    assert retry_headers(errors.QueueFull()) == {"Retry-After": "5"}
    assert retry_headers(errors.DatabaseBusy()) == {"Retry-After": "30"}
    assert retry_headers(errors.RateLimited("slow down", retry_after=7)) == {"Retry-After": "7"}
    assert retry_headers(errors.InvalidParameters("bad")) == {}
