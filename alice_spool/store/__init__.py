"""The job store: the only place that queries the job table or changes a job's status.

Each operation is one short transaction (`database.py` runs them) named after the job's
life, and returns frozen records (`records.py`), never live ORM objects. The parts:
`enqueue` (the doors' side), `claims` (the runner taking jobs, with `fair` share between
owners) and `leases` (the runner holding and finishing them), `control` (the user's
side) and `queries` (reading); `downloads` holds the model downloads' rows the same way,
`keys` the API keys and invites, `gallery` the images of succeeded jobs, `options`
the dialects' per-client settings.
"""

from __future__ import annotations

from ._base import new_id, utcnow
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


class Store(
    Enqueueing,
    Claiming,
    Leasing,
    Control,
    Queries,
    Runners,
    Counters,
    Downloads,
    Keys,
    Gallery,
    Options,
):
    """Every job-table operation, named after the job's life (and the downloads', the
    keys' and the gallery's)."""


__all__ = ["Store", "new_id", "utcnow"]
