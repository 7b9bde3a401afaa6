"""The error hierarchy: one root, `SpoolError`, and subclasses with stable codes.

Each subclass's docstring is its default message. The codes are part of the public
interface (HTTP error bodies, CLI messages, a failed job's `error_code`), so they never
change once released. Translation to HTTP statuses or exit codes happens at the edges.
"""

from __future__ import annotations

from typing import Any


class SpoolError(Exception):
    """Something went wrong in alice-spool."""

    code: str = "internal_error"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or self.code).strip().splitlines()[0]
        self.details = {k: v for k, v in details.items() if v is not None}
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


# -- configuration ---------------------------------------------------------------------


class ConfigError(SpoolError):
    """The configuration is invalid."""

    code = "config_invalid"


# -- requests --------------------------------------------------------------------------


class InvalidParameters(SpoolError):
    """The request's parameters are invalid."""

    code = "invalid_parameters"

    def __init__(self, message: str | None = None, *, field: str | None = None, **details: Any):
        super().__init__(message, field=field, **details)
        self.field = field


class BatchTooLarge(InvalidParameters):
    """The batch has more requests than the queue can ever hold."""

    code = "batch_too_large"


class QueryRefused(InvalidParameters):
    """The database refused the query these parameters make (too large, or out of range)."""


class ClientDisconnected(SpoolError):
    """The client went away before its request was read whole."""

    code = "client_disconnected"


class RequestTimeout(SpoolError):
    """The request body did not arrive in time."""

    code = "request_timeout"


class InvalidJson(SpoolError):
    """The request body is not valid JSON."""

    code = "invalid_json"


class BodyTooLarge(SpoolError):
    """The request body is too large."""

    code = "body_too_large"


class InvalidHost(SpoolError):
    """This server does not answer to that host name."""

    code = "invalid_host"


class CrossOriginRefused(SpoolError):
    """A change requested from another site is refused."""

    code = "cross_origin_refused"


class UnsupportedMediaType(SpoolError):
    """The request body must be JSON."""

    code = "unsupported_media_type"


class Unauthorized(SpoolError):
    """A valid API key is required."""

    code = "unauthorized"


class RateLimited(SpoolError):
    """Too many requests; try again later."""

    code = "rate_limit_exceeded"


class ModelNotFound(SpoolError):
    """The requested model is not installed."""

    code = "model_not_found"


class ForbiddenUrl(SpoolError):
    """The URL leads to an address that may not be fetched."""

    code = "forbidden_url"


class LoraNotFound(SpoolError):
    """The requested LoRA is not installed."""

    code = "lora_not_found"


class VaeNotFound(InvalidParameters):
    """The requested VAE is not installed."""

    code = "vae_not_found"


class ModelLoadFailed(SpoolError):
    """The model could not be loaded."""

    code = "model_load_failed"


class DownloadFailed(SpoolError):
    """The model could not be downloaded."""

    code = "download_failed"


class InsufficientStorage(SpoolError):
    """There is not enough free disk space for the download."""

    code = "insufficient_storage"


class UnsafeFormat(SpoolError):
    """The file is in a format that can run code when loaded."""

    code = "unsafe_format"


class UnsafeFile(SpoolError):
    """The source's own scans found the file dangerous (or could not scan it)."""

    code = "unsafe_file"


class UnsupportedModel(SpoolError):
    """The source offers a kind of model this server cannot install (yet)."""

    code = "unsupported_model"


class SourceUnavailable(SpoolError):
    """A model source (the Hugging Face Hub, CivitAI) did not answer as it should."""

    code = "source_unavailable"


class ModelExists(SpoolError):
    """A model of that name is already installed."""

    code = "model_exists"


class Forbidden(SpoolError):
    """The key is valid but may not do this (an admin's route, registration off)."""

    code = "forbidden"


class KeyExists(SpoolError):
    """An API key of that name exists."""

    code = "key_exists"


class InviteInvalid(SpoolError):
    """The invite code is unknown, used up or expired."""

    code = "invite_invalid"


class IdempotencyConflict(SpoolError):
    """This idempotency key was already used for a different request."""

    code = "idempotency_conflict"


class QueueFull(SpoolError):
    """The queue is full; try again later."""

    code = "queue_full"


# -- jobs ------------------------------------------------------------------------------


class JobNotFound(SpoolError):
    """No such job."""

    code = "not_found"


class ImageNotFound(SpoolError):
    """No such gallery image (or one the asker may not see: ids are not probeable)."""

    code = "not_found"


class SessionNotFound(SpoolError):
    """No such web session (or it has ended)."""

    code = "not_found"


class BatchNotFound(SpoolError):
    """No such batch."""

    code = "not_found"


class KeyNotFound(SpoolError):
    """No API key has that id or name."""

    code = "not_found"


class InviteNotFound(SpoolError):
    """No invite has that id or code."""

    code = "not_found"


class DownloadNotFound(SpoolError):
    """No such download."""

    code = "not_found"


class IllegalTransition(SpoolError):
    """The job is not in a state that allows this."""

    code = "invalid_state"


class LeaseLost(SpoolError):
    """This runner no longer holds the job's lease."""

    code = "lease_lost"


# -- outcomes recorded on failed jobs ---------------------------------------------------


class AttemptsExhausted(SpoolError):
    """The job was started too many times without finishing."""

    code = "attempts_exhausted"


class RunnerBusy(SpoolError):
    """Another runner of the same name is running on this host."""

    code = "runner_busy"


class GpuOutOfMemory(SpoolError):
    """The GPU ran out of memory."""

    code = "gpu_out_of_memory"


class GenerationFailed(SpoolError):
    """Image generation failed."""

    code = "generation_failed"


class InputUnavailable(SpoolError):
    """A stored input image of the job is missing or damaged."""

    code = "input_unavailable"


class Interrupted(SpoolError):
    """The generation was stopped before it finished."""

    code = "interrupted"


class JobTimeout(SpoolError):
    """The job took longer than its time limit."""

    code = "timeout"


class OutboxWriteFailed(SpoolError):
    """The job's outputs could not be written to the outbox."""

    code = "outbox_write_failed"


# -- storage ---------------------------------------------------------------------------


class DatabaseError(SpoolError):
    """The job database could not be used."""

    code = "database_error"


class DatabaseBusy(DatabaseError):
    """The job database stayed locked by other writers for too long."""

    code = "database_busy"


class DatabaseFull(DatabaseError):
    """The job database's disk is full: nothing new can be recorded until there is room."""

    code = "database_full"


class DatabaseNotMigrated(DatabaseError):
    """The job database's schema is not the one this version expects."""

    code = "database_not_migrated"


def from_code(code: str | None, message: str, **details: Any) -> SpoolError:
    """The error that a stored code names (a failed job's `error_code`), as its own
    class; `generation_failed` for a code this version does not know."""
    pending = list(SpoolError.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls.code == code:
            return cls(message, **details)
        pending.extend(cls.__subclasses__())
    return GenerationFailed(message, **details)
