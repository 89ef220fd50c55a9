"""The probe's decisions, with no broker library in sight: what to probe, how execution is
confirmed, the timing of a run and the verdict per queue.

It talks to the workers through :class:`~deploykit.fleet.base.Fleet` and sends probes through a
:class:`Prober` (the real one is :class:`deploykit.probe.celery_adapter.CeleryProbe`), so every
decision is tested against fakes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from deploykit.brokers.urls import NON_STORING_BACKENDS, backend_scheme
from deploykit.errors import UsageError
from deploykit.fleet.base import Fleet
from deploykit.fleet.replies import WorkerInfo, acknowledged, refused
from deploykit.inspection import FleetView, QueueRow, collect_fleet
from deploykit.orchestrate.common import require_live

PROBE_ID_PREFIX = "deploykit-probe-"
#: Serializers whose decoding cannot run code; results and events are read with these only.
SAFE_SERIALIZERS = {"json", "msgpack", "yaml"}
#: How often stored results are polled (result-backend mode; events are waited for instead).
_POLL = 0.05
#: Past the deadline a probe still waiting is expired by the worker, with this margin for clock
#: skew between hosts, so a late probe is discarded instead of running late.
EXPIRY_MARGIN = 5.0


@dataclass(frozen=True)
class ProbeResult:
    """What happened to the probe of one queue."""

    queue: str
    #: ``processed``, ``timeout``, ``failed`` (the probe raised) or ``no-consumers`` (not sent).
    status: str
    worker: str | None = None
    #: Seconds from publishing to the confirmation.
    latency: float | None = None
    consumers: tuple[str, ...] = ()
    #: Messages that were waiting in the queue ahead of the probe.
    ready_ahead: int | None = None
    task_id: str | None = None
    detail: str | None = None

    @property
    def processed(self) -> bool:
        return self.status == "processed"


@dataclass(frozen=True)
class ProbeReport:
    results: tuple[ProbeResult, ...]
    #: ``result-backend`` or ``events``.
    confirmed_via: str
    timeout: float
    elapsed: float
    #: Workers whose task events deploykit switched on for the probe (and off again).
    events_enabled_on: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(r.processed for r in self.results)


# --------------------------------------------------------------------------------------------
# pure decisions
def select_queues(
    rows: Sequence[QueueRow], requested: Sequence[str]
) -> tuple[list[QueueRow], list[ProbeResult]]:
    """The queues to probe, and results for requested queues nothing consumes (never probed).

    By default every queue with consumers; with ``requested``, exactly those (a requested queue
    without consumers fails: a readiness check for it must not pass).
    """
    by_name = {row.name: row for row in rows}
    to_probe: list[QueueRow] = []
    unserved: list[ProbeResult] = []
    names = list(dict.fromkeys(requested)) if requested else [r.name for r in rows]
    for name in names:
        row = by_name.get(name)
        has_consumers = row is not None and (row.consumers or 0) > 0
        if has_consumers and row is not None:
            to_probe.append(row)
        elif requested:
            missing = row is None or not row.exists
            unserved.append(
                ProbeResult(
                    queue=name,
                    status="no-consumers",
                    ready_ahead=row.ready if row else None,
                    detail="the broker does not know this queue" if missing else "no worker consumes it",
                )
            )
    return to_probe, unserved


def confirmation_method(app: Any, requested: str = "auto") -> tuple[str, str | None]:
    """``result-backend`` when the app stores results safely, else ``events``; with the reason."""
    if requested == "events":
        return "events", None
    reason = _backend_unusable(app)
    if requested == "backend":
        if reason:
            raise UsageError(f"--confirm-via backend: {reason}")
        return "result-backend", None
    return ("events", reason) if reason else ("result-backend", None)


def _backend_unusable(app: Any) -> str | None:
    if app is None:
        return "no app (-A): no result backend known"
    conf = app.conf
    backend = conf.result_backend
    if not backend:
        return "the app has no result backend"
    scheme = backend_scheme(backend)
    if scheme in NON_STORING_BACKENDS:
        return f"the {scheme} result backend stores nothing to read back"
    if str(conf.result_serializer) not in SAFE_SERIALIZERS:
        return f"results use the {conf.result_serializer} serializer, which deploykit never decodes"
    if conf.task_ignore_result:
        return "task_ignore_result is set"
    return None


def workers_without_results(confs: Mapping[str, Any]) -> list[str]:
    """Workers whose reported settings (``inspect conf``) store no task results."""
    lacking = []
    for node, conf in sorted(confs.items()):
        if not isinstance(conf, Mapping):
            continue
        backend = conf.get("result_backend")
        stores = bool(backend) and backend_scheme(backend) not in NON_STORING_BACKENDS
        if not stores or conf.get("task_ignore_result") is True:
            lacking.append(node)
    return lacking


def consumers_of(
    fleet: Fleet, broker: Any, control_exchange: str = "celery", builds: Sequence[str] = ()
) -> FleetView:
    """The online workers and the queues they consume — and nothing else, so that a readiness
    check stays fast even when workers hold thousands of reserved or ETA tasks.

    With ``builds``, ``stats`` is asked in the same round trip (the build each worker advertises)
    and a build no live worker advertises is a :class:`UsageError` naming the live builds.
    """
    commands: dict[str, dict[str, Any]] = {"active_queues": {}}
    if builds:
        commands["stats"] = {}
    view = collect_fleet(fleet, broker, control_exchange, commands=commands)
    if builds:
        require_live(builds, view.workers)
    return view


def for_builds(
    rows: Sequence[QueueRow], workers: Sequence[WorkerInfo], builds: Sequence[str]
) -> list[QueueRow]:
    """``rows`` as the workers of ``builds`` serve them: a queue's consumers are those workers only
    (so ``probe --build B`` probes the queues B consumes, and a requested queue no worker of B
    consumes fails as ``no-consumers``)."""
    wanted = set(builds)
    serving: dict[str, list[str]] = {}
    for worker in workers:
        if worker.build in wanted:
            for queue in worker.queues:
                serving.setdefault(queue, []).append(worker.hostname)
    return [
        replace(
            row,
            consumers=len(serving.get(row.name, ())),
            consumers_source="workers",
            consumer_workers=tuple(sorted(serving.get(row.name, ()))),
        )
        for row in rows
    ]


def judged_for_builds(
    report: ProbeReport, workers: Sequence[WorkerInfo], builds: Sequence[str]
) -> ProbeReport:
    """Say where a probe ran on a worker outside ``builds``: a queue that workers of other builds
    also consume cannot be probed on one build only (a probe goes to whichever consumer takes it),
    so such a probe proves the queue works, not that the selected build serves it."""
    build_of = {w.hostname: w.build for w in workers}
    wanted = set(builds)
    notes = list(report.notes)
    results = []
    for result in report.results:
        if result.processed and result.worker is not None and build_of.get(result.worker) not in wanted:
            other = build_of.get(result.worker)
            notes.append(
                f"the probe of {result.queue} ran on {result.worker} "
                f"({f'build {other}' if other else 'no build'}), not on build {', '.join(builds)}: "
                "workers of other builds consume it too"
            )
        if result.status == "no-consumers" and result.detail == "no worker consumes it":
            result = replace(result, detail=f"no worker on build {', '.join(builds)} consumes it")
        results.append(result)
    return replace(report, results=tuple(results), notes=tuple(notes))


class Prober(Protocol):
    """Sends probes and watches for their confirmation (:class:`CeleryProbe`; a fake in tests).

    ``seen[task_id]`` holds what is known of a probe: ``final`` (``task-succeeded``,
    ``task-failed``, …), ``worker``, ``at`` (the clock when confirmed), ``received_by`` and
    ``detail``.
    """

    seen: dict[str, dict[str, Any]]

    def open(self) -> None: ...

    def send(self, queue: str, task_id: str, expires_in: float) -> float:
        """Publish one probe to ``queue``; returns the clock time it was sent."""
        ...

    def poll(self, pending: Sequence[str], wait: float) -> None:
        """Update :attr:`seen` for ``pending`` probes, waiting at most ``wait`` seconds."""
        ...

    def forget(self, task_ids: Sequence[str]) -> None:
        """Delete what the probes left behind (stored results)."""
        ...

    def close(self) -> None: ...


def _set_events(fleet: Fleet, nodes: Sequence[str], command: str) -> dict[str, Any]:
    if not nodes:
        return {}
    return dict(fleet.control(command, {}, list(nodes), reply=True))


def probe_queues(
    app: Any,
    fleet: Fleet,
    rows: Sequence[QueueRow],
    make_probe: Callable[[str], Prober],
    *,
    requested: Sequence[str] = (),
    workers: Sequence[str] = (),
    timeout: float = 10.0,
    confirm_via: str = "auto",
    clock: Callable[[], float] = time.monotonic,
) -> ProbeReport:
    """Probe every selected queue at once and wait until each is processed or ``timeout`` passes.

    ``app`` is the user's app (``None`` with only ``-b``): it decides how execution is confirmed.
    ``make_probe(method)`` gives the :class:`Prober` for the chosen confirmation method
    (``result-backend`` or ``events``); it is only called when there is a queue to probe.
    """
    start = clock()
    to_probe, unserved = select_queues(rows, requested)
    method, reason = confirmation_method(app, confirm_via)
    notes: list[str] = []
    if method == "result-backend" and confirm_via == "auto" and workers and to_probe:
        # The app may store results while the workers run without a backend (drift): ask them.
        confs = fleet.gather({"conf": {"with_defaults": False}}, list(workers)).by_command.get("conf", {})
        no_results = workers_without_results(confs)
        if no_results:
            method, reason = "events", "workers store no results: " + ", ".join(no_results)
    if reason and method == "events" and to_probe:
        notes.append(f"confirmed through task events: {reason}")
    if not to_probe:
        return ProbeReport(tuple(unserved), method, timeout, clock() - start, (), tuple(notes))
    probe = make_probe(method)
    enabled: list[str] = []
    sent: dict[str, tuple[QueueRow, float]] = {}
    results: dict[str, ProbeResult] = {}
    probe.open()
    try:
        if method == "events":
            replies = _set_events(fleet, workers, "enable_events")
            enabled = sorted(node for node, r in replies.items() if acknowledged(r, ok="task events enabled"))
            failed = sorted(node for node, r in replies.items() if refused(r))
            silent = sorted(set(workers) - set(replies))
            if failed:
                notes.append("cannot enable task events on " + ", ".join(failed))
            if silent:
                notes.append("no reply to enable_events from " + ", ".join(silent))
        expires_in = timeout + EXPIRY_MARGIN
        for row in to_probe:
            task_id = PROBE_ID_PREFIX + str(uuid.uuid4())
            sent[task_id] = (row, probe.send(row.name, task_id, expires_in))
        deadline = start + timeout
        while True:
            pending = [t for t in sent if "final" not in probe.seen.get(t, {})]
            remaining = deadline - clock()
            if not pending or remaining <= 0:
                break
            probe.poll(pending, min(_POLL if method == "result-backend" else remaining, remaining))
        for task_id, (row, sent_at) in sent.items():
            results[row.name] = _result(row, task_id, sent_at, probe.seen.get(task_id, {}), timeout)
    finally:
        try:
            if enabled:
                replies = _set_events(fleet, enabled, "disable_events")
                left_on = sorted(set(enabled) - set(replies))
                if left_on:
                    notes.append("could not switch task events off again on " + ", ".join(left_on))
            probe.forget(list(sent))
        finally:
            probe.close()
    ordered = [results[row.name] for row in to_probe] + unserved
    return ProbeReport(tuple(ordered), method, timeout, clock() - start, tuple(enabled), tuple(notes))


def _result(
    row: QueueRow, task_id: str, sent_at: float, seen: Mapping[str, Any], timeout: float
) -> ProbeResult:
    consumers = tuple(row.consumer_workers)
    worker = seen.get("worker") or seen.get("received_by")
    if worker is None and len(consumers) == 1 and "final" in seen:
        worker = consumers[0]
    base = ProbeResult(
        queue=row.name,
        status="timeout",
        worker=worker,
        consumers=consumers,
        ready_ahead=row.ready,
        task_id=task_id,
    )
    final = seen.get("final")
    if final == "task-succeeded":
        return replace(base, status="processed", latency=seen["at"] - sent_at)
    if final is not None:
        return replace(base, status="failed", latency=seen["at"] - sent_at, detail=seen.get("detail"))
    if seen.get("received_by"):
        detail = (
            f"received by {seen['received_by']} but not run within {timeout:g}s (every pool process busy?)"
        )
    elif row.ready:
        detail = f"not processed within {timeout:g}s; {row.ready} message(s) were waiting ahead of it"
    else:
        detail = f"not processed within {timeout:g}s"
    return replace(base, detail=detail)
