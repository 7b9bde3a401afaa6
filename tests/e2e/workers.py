"""Worker processes for the multi-process tests, run as
`python -m tests.e2e.workers ROLE DATABASE_URL ...`.

- `enqueue URL NAME COUNT`: enqueue COUNT jobs one by one, keys NAME-0, NAME-1, ...
- `drain URL OWNER TOTAL OUT`: claim and finish jobs until TOTAL jobs have succeeded,
  writing each finished job's id to OUT.
- `hold URL OWNER COUNT READY`: claim COUNT jobs, write their ids to READY, then sleep
  until killed (a runner that dies holding its claims).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from alice_spool.spec import JobSpec
from alice_spool.states import JobStatus
from alice_spool.store import Store


def enqueue(url: str, name: str, count: str) -> None:
    store = Store.open(url, max_queue=1_000_000)
    for i in range(int(count)):
        spec = JobSpec(prompt=f"{name} #{i}", steps=4)
        store.jobs.enqueue(spec, source="cli", client=name, idempotency_key=f"{name}-{i}")


def drain(url: str, owner: str, total: str, out: str, deadline_s: str = "300") -> None:
    store = Store.open(url)
    deadline = time.monotonic() + float(deadline_s)
    with store.db.pinned(), Path(out).open("a") as finished:
        while time.monotonic() < deadline:
            jobs = store.leases.claim_batch(owner, 8, lease_s=60)
            for job in jobs:
                store.leases.succeed(job.id, owner, {"runner": owner, "attempt": job.attempts})
                finished.write(job.id + "\n")
            finished.flush()
            if not jobs:
                if store.jobs.counts()[JobStatus.SUCCEEDED] >= int(total):
                    return
                time.sleep(0.005)
    sys.exit(f"{owner}: deadline passed before {total} jobs succeeded")


def hold(url: str, owner: str, count: str, ready: str) -> None:
    store = Store.open(url)
    jobs = store.leases.claim_batch(owner, int(count), lease_s=1)
    Path(ready + ".tmp").write_text("\n".join(j.id for j in jobs))
    Path(ready + ".tmp").rename(ready)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    {"enqueue": enqueue, "drain": drain, "hold": hold}[role](*args)
