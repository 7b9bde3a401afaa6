"""Image URL fetches at the API's doors: at most `models.max_fetches_per_client` going at
once per client (more: 429), and none of them holding a thread that other routes need."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import anyio.from_thread
import anyio.to_thread

from .. import errors, urls

# Whose fetch slots a request's fetches spend (its key's bucket, else its address): set
# by `admit` in the task that serves the request, and seen in the worker thread its
# images are taken in (contextvars travel into `run_in_threadpool`).
fetching_for: ContextVar[str | None] = ContextVar("fetching_for", default=None)
MAX_FETCHES = 64  # going at once in all: each holds one thread while it waits


class FetchSlots:
    """Fetches going at once, per client and in all."""

    def __init__(self) -> None:
        self._going: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self, client: str, limit: int) -> Iterator[None]:
        """One fetch's slot for `client`: `rate_limit_exceeded` past `limit` of its own
        or MAX_FETCHES in all."""
        with self._lock:
            count = self._going.get(client, 0)
            if count >= limit:
                raise errors.RateLimited(
                    f"{count} image URL fetches are going for this client already "
                    "(models.max_fetches_per_client); wait for one to end",
                    retry_after=5,
                )
            if sum(self._going.values()) >= MAX_FETCHES:
                raise errors.RateLimited(
                    f"{MAX_FETCHES} image URL fetches are going already; try again soon",
                    retry_after=5,
                )
            self._going[client] = count + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._going.get(client, 0) - 1
                if left > 0:
                    self._going[client] = left
                else:
                    self._going.pop(client, None)

    def going(self, client: str) -> int:
        with self._lock:
            return self._going.get(client, 0)


@contextlib.contextmanager
def thread_lent() -> Iterator[None]:
    """While a fetch waits on a remote server in one of the event loop's worker
    threads, that pool has one thread more, so the wait is never a thread another
    route needed. Outside such a thread (a test, the CLI), nothing to lend."""
    try:
        anyio.from_thread.run_sync(_resize_pool, 1)
    except RuntimeError:  # not in a worker thread of a running loop
        yield
        return
    try:
        yield
    finally:
        anyio.from_thread.run_sync(_resize_pool, -1)


def _resize_pool(by: int) -> None:
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = int(limiter.total_tokens) + by


def fetcher(
    slots: FetchSlots,
    *,
    limit: int,
    allow_private: bool,
    max_bytes: int,
    timeout_s: float,
) -> Callable[[str, str], bytes]:
    """`urls.fetch` as the API's image doors use it: `(url, field) -> body`, within the
    asking client's slots, on a lent thread, held to `timeout_s` in all."""
    get = urls.fetcher(allow_private=allow_private, max_bytes=max_bytes, timeout_s=timeout_s)

    def fetch(url: str, field: str) -> bytes:
        with slots.slot(fetching_for.get() or "-", limit), thread_lent():
            return get(url, field)

    return fetch
