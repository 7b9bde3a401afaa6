"""`/health` (ALICE's and SAM's fields, both spellings) and `/metrics` (ALICE's JSON by
default; the Prometheus text format for scrapers, from prometheus_client)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ... import errors
from ...records import RunnerReport
from ...states import JobStatus
from ...store.counters import BUCKETS, bucket_name
from ..edge.context import Api, route, sees_everything
from ..edge.contract import Answer, Contract, Query

RUNNER_STALE_S = 15.0  # a runner not heard from for this long is taken for dead
GIB = 1024**3
ALICE = "OpenAI and ALICE"


class Problem(BaseModel):
    """A database error a request met lately: its kind (an admin sees its message too)."""

    model_config = ConfigDict(extra="allow")

    code: str
    age_s: float  # how long ago
    message: str | None = None  # an admin's to see, as the error's other details


class Runner(BaseModel):
    name: str
    owner: str | None  # host/pid/token: an admin's to see
    state: str  # idle, warming, busy, stopped; gone: not heard from lately
    heartbeat_age_s: float
    device: str | None
    gpu_name: str | None
    memory_used: int | None  # bytes; None off a GPU
    memory_total: int | None
    model: str | None
    job_id: str | None  # an admin's to see
    step: int | None
    total: int | None


class Health(BaseModel):
    """ALICE's and SAM's fields, in both spellings."""

    status: Literal["ok", "degraded"]  # degraded: a database error in the last minutes
    problems: list[Problem]
    version: str
    gpu_available: bool
    gpuAvailable: bool
    models_loaded: int
    modelsLoaded: int
    queue_depth: int
    queueDepth: int
    runner_alive: bool
    runner_heartbeat_age_s: float | None
    runners: list[Runner]
    uptime_s: float
    inbox: dict[str, Any] | None = None  # the inbox watcher's, where `serve` runs one


class MetricsQuery(Query):
    format: Literal["prometheus", "json"] | None = Field(
        None, description="else by Accept (text/plain or OpenMetrics: Prometheus)"
    )


class Metrics(BaseModel):
    """ALICE's metrics."""

    queueDepth: int
    activeGenerations: int
    gpuUtilization: float  # the share of live runners busy
    gpuMemoryUsed: float  # GiB
    gpuMemoryTotal: float  # GiB
    modelsLoaded: int
    totalGenerations: int
    avgGenerationTime: float  # seconds, the last hour


class Alive(BaseModel):
    status: Literal["alive"]


class Ready(BaseModel):
    status: Literal["ready"]


class NotReady(BaseModel):
    status: Literal["not_ready"]


class Defaults(BaseModel):
    steps: int
    guidance_scale: float
    scheduler: str
    width: int
    height: int


def live_runners(reports: list[RunnerReport], now: datetime) -> list[RunnerReport]:
    return [r for r in reports if r.state != "stopped" and r.age_s(now) < RUNNER_STALE_S]


def _snapshot(api: Api, *, with_stats: bool) -> dict[str, Any]:
    """One read of what /health (cheap: polled often) or /metrics (also the last hour's
    finished jobs) shows."""
    now = datetime.now(UTC)
    counts = api.store.jobs.counts()
    reports = api.store.leases.runners()
    live = live_runners(reports, now)
    stats = api.store.jobs.stats(window_s=3600) if with_stats else None
    totals = api.store.counters.counters() if with_stats else {}
    return {
        "now": now,
        "counts": counts,
        "reports": reports,
        "live": live,
        "stats": stats,
        "totals": totals,
    }


def _outline(trouble: dict[str, Any]) -> dict[str, Any]:
    """A database problem as anyone may see it: its kind, not its message (which can
    quote a statement's values)."""
    return {key: trouble[key] for key in ("code", "type", "age_s") if key in trouble}


DEGRADED_FOR_S = 120.0  # how long /health reports a database error a request met


@route(auth=False, contract=Contract(answers={200: Answer(Health)}))
async def health(request: Request, api: Api, client: str | None) -> Response:
    """Up, version, GPU, models loaded, queue depth, the runners' liveness."""
    snap = await run_in_threadpool(lambda: _snapshot(api, with_stats=False))
    # Open to anyone: which job runs (an id, and with it whose work is going on) and a
    # runner's lease token are an admin's to see.
    insider = await sees_everything(api, request)
    live: list[RunnerReport] = snap["live"]
    gpu = any(r.gpu_available for r in live)
    loaded = len({r.model for r in live if r.model})
    depth = snap["counts"][JobStatus.QUEUED]
    newest = max(snap["reports"], key=lambda r: r.heartbeat_at, default=None)
    trouble = api.database_trouble.recent(DEGRADED_FOR_S)
    body: dict[str, Any] = {
        # degraded: requests met a database error (a full disk, say) in the last minutes
        "status": "degraded" if trouble else "ok",
        "problems": [trouble if insider else _outline(trouble)] if trouble else [],
        "version": api.version,
        "gpu_available": gpu,
        "gpuAvailable": gpu,
        "models_loaded": loaded,
        "modelsLoaded": loaded,
        "queue_depth": depth,
        "queueDepth": depth,
        "runner_alive": bool(live),
        "runner_heartbeat_age_s": round(newest.age_s(snap["now"]), 3) if newest else None,
        "runners": [
            {
                "name": r.name,
                "owner": r.owner if insider else None,  # name/pid/token
                "state": r.state if r in live else "gone",
                "heartbeat_age_s": round(r.age_s(snap["now"]), 3),
                "device": r.device,
                "gpu_name": r.gpu_name,
                "memory_used": r.memory_used,  # bytes, None off a GPU
                "memory_total": r.memory_total,
                "model": r.model,
                "job_id": r.job_id if insider else None,
                "step": r.step,
                "total": r.total,
            }
            for r in snap["reports"]
        ],
        "uptime_s": round(datetime.now(UTC).timestamp() - api.started, 1),
    }
    if api.inbox_health is not None:
        body["inbox"] = api.inbox_health()
    return JSONResponse(body)


def _wants_prometheus(chosen: str | None, accept: str) -> bool:
    if chosen is not None:
        return chosen == "prometheus"
    return "text/plain" in accept or "application/openmetrics-text" in accept


@route(
    auth=False,
    contract=Contract(
        query=MetricsQuery,
        answers={
            200: Answer(
                Metrics,
                "ALICE's metrics, or Prometheus text (text/plain) or OpenMetrics",
                also={
                    "text/plain": {"type": "string"},
                    "application/openmetrics-text": {"type": "string"},
                },
            )
        },
    ),
)
async def metrics(request: Request, api: Api, client: str | None, query: MetricsQuery) -> Response:
    """ALICE's JSON metrics; Prometheus text for `Accept: text/plain` or
    `?format=prometheus`."""
    accept = request.headers.get("accept", "")
    prometheus = _wants_prometheus(query.format, accept)
    snap = await run_in_threadpool(lambda: _snapshot(api, with_stats=True))
    if prometheus:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(snap, api))
        encoder, content_type = choose_encoder(accept)
        return Response(encoder(registry), media_type=content_type)
    live: list[RunnerReport] = snap["live"]
    used = sum(r.memory_used or 0 for r in live)
    total = sum(r.memory_total or 0 for r in live)
    counts = snap["counts"]
    stats = snap["stats"]
    return JSONResponse(
        {
            "queueDepth": counts[JobStatus.QUEUED],
            "activeGenerations": counts[JobStatus.RUNNING],
            # No utilisation counter is read from the card: the share of live runners busy.
            "gpuUtilization": (
                round(sum(r.state == "busy" for r in live) / len(live), 3) if live else 0.0
            ),
            "gpuMemoryUsed": round(used / GIB, 3),  # GiB
            "gpuMemoryTotal": round(total / GIB, 3),  # GiB
            "modelsLoaded": len({r.model for r in live if r.model}),
            "totalGenerations": int(snap["totals"].get("jobs_finished:succeeded", 0)),
            "avgGenerationTime": float(stats.mean_run_s or 0.0),  # seconds, last hour
        }
    )


class _Snapshot(Collector):
    """The Prometheus families, from one read of the database."""

    def __init__(self, snap: dict[str, Any], api: Api) -> None:
        self.snap = snap
        self.api = api

    def collect(self) -> Iterator[Any]:
        snap = self.snap
        depth = GaugeMetricFamily("alice_jobs", "Jobs in the table, by state", labels=["state"])
        for status, count in snap["counts"].items():
            depth.add_metric([status.value], count)
        yield depth
        stats = snap["stats"]
        finished = GaugeMetricFamily(
            "alice_jobs_finished_last_hour", "Jobs finished in the last hour", labels=["state"]
        )
        for status, count in stats.finished.items():
            finished.add_metric([status.value], count)
        yield finished
        yield GaugeMetricFamily(
            "alice_images_last_hour", "Images made in the last hour", value=stats.images
        )
        live = snap["live"]
        up = GaugeMetricFamily(
            "alice_runner_up", "1 if the runner reported lately", labels=["runner"]
        )
        memory = GaugeMetricFamily(
            "alice_gpu_memory_bytes", "GPU memory of each runner", labels=["runner", "kind"]
        )
        for report in snap["reports"]:
            up.add_metric([report.name], 1.0 if report in live else 0.0)
            if report.memory_total is not None:
                memory.add_metric([report.name, "total"], report.memory_total)
                memory.add_metric([report.name, "used"], report.memory_used or 0)
        yield up
        yield memory
        # Totals that only grow (kept as jobs finish): what rate() and
        # histogram_quantile() need.
        totals: dict[str, float] = snap["totals"]
        finished_total = CounterMetricFamily(
            "alice_jobs_finished", "Jobs finished since the database was made", labels=["state"]
        )
        for status in JobStatus:
            if status.finished:
                finished_total.add_metric([status.value], totals.get(f"jobs_finished:{status}", 0))
        yield finished_total
        yield CounterMetricFamily(
            "alice_images", "Images made since the database was made", value=totals.get("images", 0)
        )
        for name, helptext in (
            ("job_wait_seconds", "Queued to started, every succeeded job"),
            ("job_run_seconds", "Started to finished, every succeeded job"),
        ):
            yield _histogram(name, helptext, totals)


def _histogram(name: str, helptext: str, totals: dict[str, float]) -> HistogramMetricFamily:
    buckets = [
        ("+Inf" if bound == float("inf") else str(bound), totals.get(bucket_name(name, bound), 0))
        for bound in BUCKETS
    ]
    return HistogramMetricFamily(
        f"alice_{name}", helptext, buckets=buckets, sum_value=totals.get(f"{name}:sum", 0.0)
    )


@route(auth=False, contract=Contract(answers={200: Answer(Alive)}, tag=ALICE))
async def livez(request: Request, api: Api, client: str | None) -> Response:
    """ALICE's liveness probe: this process answers."""
    return JSONResponse({"status": "alive"})


async def _ready(api: Api) -> bool:
    """A runner reports, and the database answers without recent trouble."""
    try:
        snap = await run_in_threadpool(lambda: _snapshot(api, with_stats=False))
    except errors.SpoolError:
        return False
    return bool(snap["live"]) and api.database_trouble.recent(DEGRADED_FOR_S) is None


@route(
    auth=False,
    contract=Contract(
        answers={
            200: Answer(Ready, "Ready"),
            503: Answer(NotReady, "Not ready: no runner reports, or the database is in trouble"),
        },
        tag=ALICE,
    ),
)
async def readyz(request: Request, api: Api, client: str | None) -> Response:
    """ALICE's readiness probe: `{"status": "ready"}`, or 503 while no runner reports
    or the database is in trouble."""
    if await _ready(api):
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not_ready"}, status_code=503)


@route(contract=Contract(answers={200: Answer(Defaults)}, tag=ALICE))
async def generation_defaults(request: Request, api: Api, client: str | None) -> Response:
    """ALICE's defaults for a request that leaves them out: steps, guidance, scheduler,
    and the default model's native size."""
    generation = api.settings.generation
    try:
        model = await run_in_threadpool(api.registry.default, generation.default_model)
        size = model.native_size or 512
    except errors.ModelNotFound:
        size = 512
    return JSONResponse(
        {
            "steps": generation.default_steps,
            "guidance_scale": generation.default_guidance_scale,
            "scheduler": generation.default_scheduler,
            "width": size,
            "height": size,
        }
    )
