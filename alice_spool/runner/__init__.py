"""The GPU runner: claim compatible jobs, generate them as one batch, write their outbox
directories, finish them; forever, one process per GPU.

Three threads share the work so the GPU never waits on the database or the disk:

- the *main loop* claims a batch (the head job and the queued jobs that can share its
  pipeline call), generates it, and hands each job's images to the writer;
- the *writer* encodes the PNGs, writes the job's outbox directory durably, and only
  then marks the job succeeded, while the main loop already runs the next batch;
- the *monitor* writes progress (a few times a second at most), notices cancels and
  renews the leases of every job the runner holds, and stops a batch that hangs.

A runner's leases carry its name (`runner.name`, the host name by default). A lock
file makes the name unique on the host, so a starting runner knows that running jobs
under its name belong to a predecessor that died, and reruns them at once.

The code follows the threads: the main loop in `loop.py`, the writer (and finishing jobs)
in `writer.py`, the monitor in `monitor.py`; `parts.py` has the options and the data they
share.
"""

from .loop import Runner
from .parts import RunnerOptions

__all__ = ["Runner", "RunnerOptions"]
