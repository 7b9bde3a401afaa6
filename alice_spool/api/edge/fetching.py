"""Image URL fetches at the API's doors: at most `models.max_fetches_per_client` going at
once per client (more: 429), and none of them holding a thread that other routes need."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import anyio.from_thread
import anyio.to_thread

from ... import urls
from .limits import Slots

# Whose fetch slots a request's fetches spend (its key's bucket, else its address): set
# by `admit` in the task that serves the request, and seen in the worker thread its
# images are taken in (contextvars travel into `run_in_threadpool`).
fetching_for: ContextVar[str | None] = ContextVar("fetching_for", default=None)
MAX_FETCHES = 64  # going at once in all: each holds one thread while it waits


def fetch_slots(limit: int) -> Slots:
    """Image URL fetches going at once: `models.max_fetches_per_client` per client, and
    MAX_FETCHES in all."""
    return Slots(
        limit,
        busy="{count} image URL fetches are going for this client already "
        "(models.max_fetches_per_client); wait for one to end",
        total=MAX_FETCHES,
        full=f"{MAX_FETCHES} image URL fetches are going already; try again soon",
    )


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
    slots: Slots,
    *,
    allow_private: bool,
    max_bytes: int,
    timeout_s: float,
) -> Callable[[str, str], bytes]:
    """`urls.fetch` as the API's image doors use it: `(url, field) -> body`, within the
    asking client's slots, on a lent thread, held to `timeout_s` in all."""
    get = urls.fetcher(allow_private=allow_private, max_bytes=max_bytes, timeout_s=timeout_s)

    def fetch(url: str, field: str) -> bytes:
        with slots.held(fetching_for.get() or "-"), thread_lent():
            return get(url, field)

    return fetch
