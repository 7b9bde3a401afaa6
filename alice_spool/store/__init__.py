"""The job store: the only place that queries the job table or changes a job's status.

Each operation is one short transaction (`database.py` runs them) named after the job's
life, and returns frozen records (`records.py`), never live ORM objects. A `Store` is
one repository per concern over a shared core (`repositories.py`: `store.jobs`,
`store.leases`, `store.downloads`, `store.keys`, `store.gallery`, `store.options`,
`store.counters`). The modules: `enqueue` (the doors' side), `claims` (the runner taking
jobs, with `fair` share between owners) and `leases` (the runner holding and finishing
them), `control` (the user's side) and `queries` (reading); `downloads` holds the model
downloads' rows the same way, `keys` the API keys and invites, `gallery` the images of
succeeded jobs, `options` the dialects' per-client settings.
"""

from __future__ import annotations

from ._base import new_id, utcnow
from .repositories import Jobs, Leases, Store

__all__ = ["Jobs", "Leases", "Store", "new_id", "utcnow"]
