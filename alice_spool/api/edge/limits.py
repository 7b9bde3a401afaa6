"""How much one client may ask at once: requests a minute (a token bucket each) and
event streams open at once, counted per key (`Principal.bucket`), else per address."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator

from ... import errors

MAX_BUCKETS = 10_000  # rate-limit buckets kept before idle ones are dropped


class RateLimiter:
    """A token bucket per client (its key's `Principal.bucket`, else its address):
    `per_minute` requests a minute, in bursts of up to a tenth of that (at least 5).
    0 = no limit."""

    def __init__(self, per_minute: int, *, burst: float | None = None) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(5.0, per_minute / 10.0) if burst is None else burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, client: str, *, spend: bool = True, per_minute: int | None = None) -> None:
        """`rate_limit_exceeded` when the client's bucket is empty; else take a token
        from it (or, with `spend=False`, only look). `per_minute`: this client's own
        limit (a key's), instead of the server's."""
        rate, burst = self.rate, self.burst
        if per_minute is not None:
            rate, burst = per_minute / 60.0, max(5.0, per_minute / 10.0)
        if rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, since = self._buckets.get(client, (burst, now))
            tokens = min(burst, tokens + (now - since) * rate)
            if tokens < 1:
                wait = math.ceil((1 - tokens) / rate)
                self._buckets[client] = (tokens, now)
                raise errors.RateLimited(
                    f"too many requests; try again in {wait} s",
                    retry_after=wait,
                )
            self._buckets[client] = (tokens - 1 if spend else tokens, now)
            if len(self._buckets) > MAX_BUCKETS:  # forget clients whose buckets refilled
                full_after = burst / rate
                self._buckets = {c: b for c, b in self._buckets.items() if now - b[1] < full_after}


class Slots:
    """What each client holds open at once (its key's `Principal.bucket`, else its
    address): at most `limit` each, and `total` in all if given; one more is
    `rate_limit_exceeded` until one of them ends. `busy` (with `{count}`) and `full` say
    which limit was met."""

    def __init__(self, limit: int, *, busy: str, total: int | None = None, full: str = "") -> None:
        self.limit, self.total = limit, total
        self.busy, self.full = busy, full
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> None:
        with self._lock:
            count = self._open.get(client, 0)
            if count >= self.limit:
                raise errors.RateLimited(self.busy.format(count=count), retry_after=5)
            if self.total is not None and sum(self._open.values()) >= self.total:
                raise errors.RateLimited(self.full, retry_after=5)
            self._open[client] = count + 1

    def give_back(self, client: str) -> None:
        with self._lock:
            count = self._open.get(client, 0) - 1
            if count > 0:
                self._open[client] = count
            else:
                self._open.pop(client, None)

    @contextlib.contextmanager
    def held(self, client: str) -> Iterator[None]:
        """One slot for the block."""
        self.take(client)
        try:
            yield
        finally:
            self.give_back(client)

    def count(self, client: str) -> int:
        with self._lock:
            return self._open.get(client, 0)


def stream_slots(limit: int) -> Slots:
    """Open event streams (and WebSockets): `server.max_streams_per_client`."""
    return Slots(
        limit,
        busy="{count} event streams are open for this client already "
        "(server.max_streams_per_client); close one first",
    )
