"""The monitor thread: progress a few times a second at most, cancels noticed, the
leases of every job held renewed, dead runners' jobs rescued, and a batch that hangs
given up on."""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

from ..errors import (
    JobTimeout,
    SpoolError,
)
from ..records import RunnerReport
from .parts import HANG_EXIT_CODE, IDLE_REPORT_S, REPORT_S, Running, utcnow
from .writer import Finishing

log = logging.getLogger("alice_spool.runner")


class Monitoring(Finishing):
    """The runner's monitor thread (a part of `Runner`, by thread)."""

    # -- the monitor thread ---------------------------------------------------------------

    def _monitor_loop(self) -> None:
        renew_every = self.options.lease_s / 3
        last_renewal = last_rescue = time.monotonic()
        last_report = float("-inf")
        with self.store.db.pinned():
            while not self._done.wait(self.options.progress_s):
                try:
                    self._check_running()
                    self._check_parent()
                    every = REPORT_S if self._report_changed() else IDLE_REPORT_S
                    if time.monotonic() - last_report >= every:
                        self._report()
                        last_report = time.monotonic()
                    if time.monotonic() - last_renewal >= renew_every:
                        self._renew_leases()
                        last_renewal = time.monotonic()
                    if time.monotonic() - last_rescue >= self.options.lease_s:
                        self._rescue_orphans()
                        last_rescue = time.monotonic()
                except SpoolError as exc:  # the database is busy or away: try again
                    log.warning("monitor: %s", exc.message)

    def _check_parent(self) -> None:
        parent = self.options.parent_pid
        if parent is not None and os.getppid() != parent and not self._stop.is_set():
            log.warning("serve (pid %d) is gone: stopping", parent)
            self._stop.set()

    def _report_changed(self) -> bool:
        """Busy, or idle in another way than last reported (warming, another model)."""
        return self._running is not None or self._last_report != self._report_key()

    def _report_key(self) -> tuple[str, str | None]:
        return (self._idle_state(), self.generator.resident_model)

    def _report(self, state: str | None = None) -> None:
        """Tell /health and /metrics what this runner is doing (about once a second)."""
        running = self._running
        self._last_report = self._report_key() if running is None else None
        info_of = getattr(self.generator, "device_info", None)
        info: dict[str, Any] = info_of() if info_of is not None else {}
        self.store.leases.report_runner(
            RunnerReport(
                name=self.options.name,
                owner=self.owner,
                started_at=self._started_at,
                heartbeat_at=utcnow(),
                state=state or ("busy" if running is not None else self._idle_state()),
                device=info.get("device"),
                gpu_available=bool(info.get("gpu_available", False)),
                gpu_name=info.get("gpu_name"),
                memory_used=info.get("memory_used"),
                memory_total=info.get("memory_total"),
                model=self.generator.resident_model,
                job_id=running.job_ids[0] if running is not None else None,
                step=running.step if running is not None else None,
                total=running.total if running is not None else None,
            )
        )

    def _idle_state(self) -> str:
        return "warming" if self._warming else "idle"

    def _report_quietly(self, state: str) -> None:
        try:
            self._report(state)
        except SpoolError as exc:
            log.warning("could not report the runner %s: %s", state, exc.message)

    def _rescue_orphans(self, held_by: str | None = None) -> None:
        """Requeue the jobs of runners whose leases expired (another host's runner that
        died, say); the ones out of attempts fail, with a result.json saying so."""
        report = self.store.leases.requeue_orphans(held_by=held_by)
        for job in self.store.jobs.get_many(report.exhausted):
            self._write_failure(job, None)
        if report.requeued or report.exhausted or held_by is not None:
            log.info(
                "%d orphaned job(s) requeued, %d out of attempts",
                len(report.requeued),
                len(report.exhausted),
            )

    def _check_running(self) -> None:
        running = self._running
        if running is None:
            return
        if time.monotonic() > running.deadline + self.options.hang_grace_s:
            self._hung(running)
            return
        progress = (running.step, running.total)
        if progress != running.reported and running.total:
            beat = self.store.leases.set_progress(self.owner, running.job_ids, *progress)
            running.reported = progress
        else:
            beat = self.store.leases.heartbeat(
                self.owner, running.job_ids, lease_s=self.options.lease_s
            )
        self._note(beat.cancel_requested, beat.lost(running.job_ids))

    def _renew_leases(self) -> None:
        with self._lock:
            held = list(self._held)
        beat = self.store.leases.heartbeat(self.owner, held, lease_s=self.options.lease_s)
        self._note(beat.cancel_requested, beat.lost(held))

    def _note(self, cancelled: frozenset[str], lost: set[str]) -> None:
        """Act on a heartbeat: cancelled jobs are finished as cancelled now (the batch
        they are in drops their images, or stops if nothing else is left in it); jobs
        whose lease was lost are let go."""
        with self._lock:
            for job_id in lost:
                if self._held.pop(job_id, None) is not None:
                    log.warning("lost the lease of job %s", job_id, extra={"job_id": job_id})
            to_cancel = [job_id for job_id in cancelled if job_id in self._held]
        for job_id in to_cancel:
            self._finish(
                job_id, functools.partial(self.store.leases.finish_cancelled, job_id, self.owner)
            )

    def _hung(self, running: Running) -> None:
        """The device has not come back from a call long past its deadline: fail its jobs
        with `timeout` and give up the process (its supervisor starts a fresh one)."""
        message = (
            f"the device did not return within {self.options.job_timeout_s:g} s "
            f"(+{self.options.hang_grace_s:g} s grace); the runner restarted"
        )
        log.critical("%s; failing %d job(s)", message, len(running.job_ids))
        error = JobTimeout(message)
        for job_id in running.job_ids:
            with self._lock:
                job = self._held.get(job_id)
            if job is None:  # cancelled or taken over meanwhile
                continue
            # Like every finished job, it gets its result.json (the error, no images).
            result = {**self._base_result(job, job.spec), "status": "failed"}
            result.update(images=[], error=error.to_dict())
            self._write_failure(job, result)
            try:
                self._finish(
                    job_id,
                    functools.partial(
                        self.store.leases.fail,
                        job_id,
                        self.owner,
                        error.code,
                        message,
                        result=result,
                    ),
                )
            except SpoolError as exc:  # the database is away too: its lease will lapse
                log.warning("%s", exc.message)
        self._on_hang()

    @staticmethod
    def _exit_hung() -> None:
        logging.shutdown()
        os._exit(HANG_EXIT_CODE)
