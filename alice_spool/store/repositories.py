"""The store as one repository per concern over a shared core: `jobs` (queued by the
doors, steered by their owners, read), `leases` (the runner's side: claims, leases,
finishing, its reports), `downloads`, `keys` (API keys, invites, web sessions),
`gallery`, `options` (the dialects' per-client settings) and `counters`."""

from __future__ import annotations

from typing import Any, Self

from ..database import Database
from ._base import Repository, StoreBase
from .claims import Claiming
from .control import Control
from .counters import Counters
from .downloads import Downloads
from .enqueue import Enqueueing
from .gallery import Gallery
from .keys import Keys
from .leases import Leasing
from .options import Options
from .queries import Queries
from .runners import Runners


class Jobs(Enqueueing, Control, Queries):
    """The jobs: queued by the doors, steered by their owners (cancel, retry, priority,
    purge), read (one, a page, counts, batches, stats)."""


class Leases(Claiming, Leasing, Runners):
    """The runner's side: the fair, compatible claim, leases and heartbeats, a job's
    success or failure, orphans put back, and the runners' reports."""


class Store(Repository):
    """Every query and status change, by concern. Each operation is one short
    transaction and returns frozen records. The store itself reads as a repository
    (its `db`, limits and `changes` are the shared core's)."""

    def __init__(self, db: Database, *, max_queue: int = 10_000, max_attempts: int = 3) -> None:
        super().__init__(StoreBase(db, max_queue=max_queue, max_attempts=max_attempts))
        self.jobs = Jobs(self.core)
        self.leases = Leases(self.core)
        self.downloads = Downloads(self.core)
        self.keys = Keys(self.core)
        self.gallery = Gallery(self.core)
        self.options = Options(self.core)
        self.counters = Counters(self.core)

    @classmethod
    def open(
        cls, url: str, *, max_queue: int = 10_000, max_attempts: int = 3, **database: Any
    ) -> Self:
        """A store on its own database (`database` options go to `Database.open`)."""
        return cls(Database.open(url, **database), max_queue=max_queue, max_attempts=max_attempts)

    def close(self) -> None:
        self.core.close()
