"""Times and tables for people at a terminal: parsing `1h` or a date, printing job lists."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from .errors import InvalidParameters
from .records import JobRecord

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


def parse_duration(text: str, name: str = "duration") -> timedelta:
    """`90s`, `15m`, `1h30m`, `7d`, `2w` -> timedelta."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise InvalidParameters(
            f"{name} {text!r} is not a duration (examples: 90s, 15m, 1h30m, 7d, 2w)", field=name
        )
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


def parse_when(text: str, name: str = "time", *, now: datetime | None = None) -> datetime:
    """A point in time: a duration back from now (`2h`, `7d`) or an ISO 8601 date or
    date-time. A time without an offset is local time."""
    now = now or datetime.now(UTC)
    try:
        return now - parse_duration(text, name)
    except InvalidParameters:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidParameters(
            f"{name} {text!r} is neither a duration (like 2h or 7d) nor a date "
            "(like 2026-11-01 or 2026-11-01T08:00:00Z)",
            field=name,
        ) from None
    return moment.astimezone(UTC)  # naive -> local time, then UTC


def age(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "-"
    return short_duration(((now or datetime.now(UTC)) - moment).total_seconds())


def short_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def status_label(job: JobRecord) -> str:
    if job.cancel_requested and not job.finished:
        return "cancelling"
    return job.status.value


def progress_label(job: JobRecord) -> str:
    if job.progress_total:
        return f"{job.progress_step or 0}/{job.progress_total}"
    return "-"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, width: int | None = None
) -> str:
    """Left-aligned columns; the last column is cut to fit the terminal."""
    width = width or shutil.get_terminal_size((120, 24)).columns
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    fixed = sum(widths[:-1]) + 2 * (len(widths) - 1)
    widths[-1] = max(min(widths[-1], width - fixed), len(headers[-1]), 10)

    def line(cells: Sequence[str]) -> str:
        out = []
        for cell, w in zip(cells, widths, strict=True):
            out.append(cell if len(cell) <= w else cell[: w - 1] + "~")
        return "  ".join(c.ljust(w) for c, w in zip(out, widths, strict=True)).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def jobs_table(jobs: Sequence[JobRecord], *, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    rows = [
        [
            job.id,
            status_label(job),
            str(job.priority),
            job.model or "(default)",
            f"{job.spec.n}",
            age(job.created_at, now),
            progress_label(job),
            " ".join(job.spec.prompt.split()),
        ]
        for job in jobs
    ]
    return table(["ID", "STATUS", "PRI", "MODEL", "N", "AGE", "STEP", "PROMPT"], rows)


def job_details(job: JobRecord) -> str:
    """`show`: every field of one job, one per line."""
    spec = job.spec
    size = f"{spec.width or '?'}x{spec.height or '?'}" if spec.width or spec.height else "native"
    lines = [
        ("id", job.id),
        ("status", status_label(job)),
        ("batch", job.batch_id or "-"),
        ("source", f"{job.source.value}" + (f" ({job.client})" if job.client else "")),
        ("idempotency key", job.idempotency_key or "-"),
        ("priority", str(job.priority)),
        ("created", _iso(job.created_at)),
        ("not before", _iso(job.not_before)),
        ("started", _iso(job.started_at)),
        ("finished", _iso(job.finished_at)),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        ("progress", progress_label(job)),
        ("model", spec.model or "(default)"),
        ("prompt", spec.prompt),
        ("negative prompt", spec.negative_prompt or "-"),
        ("size", size),
        ("steps", str(spec.steps)),
        ("guidance scale", f"{spec.guidance_scale:g}"),
        ("scheduler", spec.scheduler),
        ("seed", str(spec.seed)),
        ("images", str(spec.n)),
    ]
    if spec.loras:
        hashes = {
            str(lora.get("name")): str(lora.get("sha256", ""))[:12]
            for lora in (job.result or {}).get("loras", [])
        }
        for name, scale in spec.loras:
            used = f" (sha256 {hashes[name]})" if hashes.get(name) else ""
            lines.append(("lora", f"{name} at {scale:g}{used}"))
    if job.lease_owner:
        lines.append(("lease", f"{job.lease_owner} until {_iso(job.lease_expires_at)}"))
    if job.error_code:
        lines.append(("error", f"{job.error_code}: {job.error_message}"))
    if job.result:
        for image in job.result.get("images", []):
            lines.append(("image", str(image.get("file", image))))
    pad = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.rjust(pad)}  {v}" for k, v in lines)


def _iso(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z") if moment else "-"
