"""Errors at the HTTP edge: the status of every `SpoolError` class, and the native error
body `{"error": {message, type, code, param?}}` (OpenAI's shape, which ALICE's and SAM's
clients read). A dialect answers in its own shape from the same status (`status_of`, with
the few classes it answers differently)."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

from ... import errors

# The HTTP status of each error class; a subclass without its own entry takes its parent's.
STATUS: Mapping[type[errors.SpoolError], int] = {
    errors.SpoolError: 500,
    errors.ConfigError: 500,  # the server's configuration, not the request
    errors.InvalidParameters: 400,
    errors.QueryRefused: 400,
    errors.BatchTooLarge: 413,
    errors.VaeNotFound: 404,
    errors.ClientDisconnected: 400,  # nobody reads it: the client has gone
    errors.RequestTimeout: 408,
    errors.InvalidJson: 400,
    errors.BodyTooLarge: 413,
    errors.InvalidHost: 421,
    errors.CrossOriginRefused: 403,
    errors.UnsupportedMediaType: 415,
    errors.Unauthorized: 401,
    errors.RateLimited: 429,
    errors.ModelNotFound: 404,
    errors.ForbiddenUrl: 400,
    errors.LoraNotFound: 404,
    errors.ModelLoadFailed: 500,
    errors.DownloadFailed: 502,  # the source failed us
    errors.InsufficientStorage: 507,
    errors.UnsafeFormat: 400,
    errors.UnsafeFile: 400,
    errors.UnsupportedModel: 400,
    errors.SourceUnavailable: 502,
    errors.ModelExists: 409,
    errors.Forbidden: 403,
    errors.KeyExists: 409,
    errors.InviteInvalid: 403,
    errors.IdempotencyConflict: 409,
    errors.QueueFull: 503,
    errors.JobNotFound: 404,
    errors.ImageNotFound: 404,
    errors.SessionNotFound: 404,
    errors.BatchNotFound: 404,
    errors.KeyNotFound: 404,
    errors.InviteNotFound: 404,
    errors.DownloadNotFound: 404,
    errors.IllegalTransition: 409,
    errors.LeaseLost: 409,
    errors.AttemptsExhausted: 500,
    errors.RunnerBusy: 409,
    errors.GpuOutOfMemory: 503,
    errors.GenerationFailed: 500,
    errors.InputUnavailable: 500,
    errors.Interrupted: 503,  # the runner stopped under the job: it runs again
    errors.JobTimeout: 504,
    errors.OutboxWriteFailed: 500,
    errors.DatabaseError: 500,
    errors.DatabaseBusy: 503,
    errors.DatabaseFull: 503,
    errors.DatabaseNotMigrated: 500,
}
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    403: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    421: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
    504: "server_error",
}
QUEUE_FULL_RETRY_AFTER_S = 5
DATABASE_RETRY_AFTER_S = 30  # a full disk or a long lock: not gone in a second


def status_of(
    error: errors.SpoolError, overrides: Mapping[type[errors.SpoolError], int] | None = None
) -> int:
    """The error's HTTP status: its own class's entry, else its nearest parent's. A
    dialect's `overrides` win over `STATUS` at the same class only, so a subclass with
    an entry of its own (413 for a batch too large) keeps it."""
    for cls in type(error).__mro__:
        if overrides and cls in overrides:
            return overrides[cls]
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(
    code: str,
    message: str,
    *,
    status: int,
    headers: Mapping[str, str] | None = None,
    param: str | None = None,
) -> JSONResponse:
    error = {"message": _encodable(message), "type": _TYPES.get(status, "server_error")}
    error["code"] = code
    if param is not None:  # which parameter, for clients that show it
        error["param"] = _encodable(param)
    return JSONResponse({"error": error}, status_code=status, headers=dict(headers or {}))


def _encodable(text: str) -> str:
    """Text that encodes as UTF-8: a lone surrogate that came in a client's JSON (as a
    key, say) is shown as its escape instead of failing the answer."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def retry_headers(exc: errors.SpoolError) -> dict[str, str]:
    """Retry-After for the refusals that pass: a full queue, a busy or full database, a
    rate limit."""
    if isinstance(exc, errors.QueueFull):
        return {"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)}
    if isinstance(exc, errors.DatabaseFull | errors.DatabaseBusy):
        return {"Retry-After": str(DATABASE_RETRY_AFTER_S)}
    if isinstance(exc, errors.RateLimited) and "retry_after" in exc.details:
        return {"Retry-After": str(exc.details["retry_after"])}
    return {}


def spool_error_response(exc: errors.SpoolError) -> JSONResponse:
    field = exc.details.get("field")
    return error_response(
        exc.code,
        exc.message,
        status=status_of(exc),
        headers=retry_headers(exc),
        param=None if field is None else str(field),
    )
