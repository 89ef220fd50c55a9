"""Every published ``--json`` document, built in one place.

A document is plain JSON values built field by field from the core's results: renaming a field of
an internal dataclass cannot change a published schema (a missing attribute fails the golden tests
in ``tests/output/``, the JSON Schema files in ``schemas/`` say what each document promises).
:data:`SCHEMAS` is the one list of schema names and versions; ``schemas/<name>.<version>.json``
describes each (``tests/output/test_documents.py`` checks both ways).

A version changes when a reader of the previous version would misread a field (renamed, removed,
retyped, meaning changed); adding a field does not need one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deploykit.brokers.base import BrokerSettings, DelayedStore
    from deploykit.builds import BuildRow, BuildsView
    from deploykit.fleet.base import Discovery
    from deploykit.fleet.replies import HeldTask, WorkerInfo
    from deploykit.inspection import (
        FleetView,
        Hazard,
        QueueRow,
        QueuesView,
        ScheduledEntry,
        ScheduledView,
        StatusView,
        Verdict,
        WaitingEta,
    )
    from deploykit.manifest.check import Staleness
    from deploykit.manifest.rules import Rule
    from deploykit.orchestrate.deploy import DeployResult
    from deploykit.orchestrate.drain import ConsumerRef, DrainResult, EtaTask
    from deploykit.orchestrate.restart import BatchReport, RestartResult
    from deploykit.orchestrate.resume import ResumeResult
    from deploykit.orchestrate.shutdown import ShutdownResult, WorkerShutdown
    from deploykit.registry import PublishResult, RegistryEntry

#: Every published document: its name (``deploykit.<name>/<version>``) and current version.
SCHEMAS: Mapping[str, int] = {
    "workers": 1,
    "queues": 1,
    "scheduled": 1,
    "status": 1,
    "drain": 1,
    "resume": 1,
    "shutdown": 1,
    "restart": 1,
    "deploy": 1,
    # Version 2: rule IDs are UPPER_SNAKE (``ACKS_LATE_WITHOUT_REJECT``) and ``findings[]`` is the
    # finding object every command shares (``rule``/``message``/``hint`` for ``id``/``title``/``fix``).
    "doctor": 2,
    "probe": 1,
    # Version 2: ``totals`` and ``groups[].count`` count messages only (beat entries moved to
    # ``beat{}`` and ``groups[].beat_entries``); ``totals.breaking`` no longer includes beat
    # entries. A reader of version 1 would misread those numbers.
    "scan": 2,
    "findings": 1,
    "snapshot": 1,
    "rules": 1,
    "publish": 1,
    "registry": 1,
    "builds": 1,
}

Json = dict[str, Any]


def schema_name(kind: str) -> str:
    """``deploykit.<kind>/<version>`` (a :class:`KeyError` for a document nobody published)."""
    return f"deploykit.{kind}/{SCHEMAS[kind]}"


def envelope(kind: str, broker: str | None, *, now: datetime | None = None) -> Json:
    """The fields every broker document starts with: ``schema``, masked ``broker``, ``generated_at``."""
    return {
        "schema": schema_name(kind),
        "broker": broker,
        "generated_at": _time(now or datetime.now(timezone.utc)),
    }


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# -- inspection -------------------------------------------------------------------------------
def _held_task(task: HeldTask) -> Json:
    return {
        "id": task.id,
        "name": task.name,
        "worker": task.worker,
        "state": task.state,
        "queue": task.queue,
        "eta": _time(task.eta),
        "args": task.args,
        "kwargs": task.kwargs,
        "priority": task.priority,
        "acknowledged": task.acknowledged,
    }


def _worker(worker: WorkerInfo) -> Json:
    return {
        "hostname": worker.hostname,
        "pid": worker.pid,
        "pool": worker.pool,
        "concurrency": worker.concurrency,
        "prefetch_count": worker.prefetch_count,
        "queues": list(worker.queues),
        "active": worker.active,
        "reserved": worker.reserved,
        "scheduled": worker.scheduled,
        "uptime": worker.uptime,
        "celery_version": worker.celery_version,
        "build": worker.build,
        "tasks": [_held_task(t) for t in worker.tasks],
        "partial": worker.partial,
    }


def _discovery(discovery: Discovery) -> Json:
    return {"nodes": list(discovery.nodes), "method": discovery.method, "silent": list(discovery.silent)}


def _queue(row: QueueRow) -> Json:
    by_priority = row.ready_by_priority
    return {
        "name": row.name,
        "ready": row.ready,
        "unacked": row.unacked,
        "eta_held": row.eta_held,
        "consumers": row.consumers,
        "consumers_source": row.consumers_source,
        "consumer_workers": list(row.consumer_workers),
        "queue_type": row.queue_type,
        "exists": row.exists,
        "listed_by": list(row.listed_by),
        "ready_by_priority": None if by_priority is None else {str(k): v for k, v in by_priority.items()},
    }


def _delayed(delayed: DelayedStore | None) -> Json | None:
    if delayed is None:
        return None
    return {"queues": list(delayed.queues), "messages": delayed.messages, "note": delayed.note}


def _hazard(hazard: Hazard) -> Json:
    return {"code": hazard.code, "message": hazard.message}


def _entry(entry: ScheduledEntry) -> Json:
    return {
        "id": entry.id,
        "name": entry.name,
        "eta": _time(entry.eta),
        "seconds_left": entry.seconds_left,
        "location": entry.location,
        "worker": entry.worker,
        "queue": entry.queue,
        "args": entry.args,
        "kwargs": entry.kwargs,
        "hazards": [_hazard(h) for h in entry.hazards],
        "build": entry.build,
    }


def _waiting(waiting: WaitingEta | None) -> Json | None:
    if waiting is None:
        return None
    return {"by_queue": dict(waiting.by_queue), "unread": waiting.unread, "unlisted": dict(waiting.unlisted)}


def _broker_settings(settings: BrokerSettings) -> Json:
    return {
        "visibility_timeout": settings.visibility_timeout,
        "consumer_timeout": settings.consumer_timeout,
        "consumer_timeout_source": settings.consumer_timeout_source,
    }


def _verdict(verdict: Verdict) -> Json:
    return {
        "busy": verdict.busy,
        "summary": verdict.summary,
        "counts": dict(verdict.counts),
        "unknown": list(verdict.unknown),
    }


def workers_document(view: FleetView, *, broker: str | None) -> Json:
    """``deploykit workers --json``."""
    return {
        **envelope("workers", broker),
        "workers": [_worker(w) for w in view.workers],
        "discovery": _discovery(view.discovery),
    }


def queues_document(view: QueuesView, *, broker: str | None) -> Json:
    """``deploykit queues --json``."""
    return {
        **envelope("queues", broker),
        "queues": [_queue(q) for q in view.queues],
        "source": view.source,
        "notes": list(view.notes),
        "delayed": _delayed(view.delayed),
    }


def scheduled_document(view: ScheduledView, fleet: FleetView, *, broker: str | None) -> Json:
    """``deploykit scheduled --json``."""
    return {
        **envelope("scheduled", broker),
        "scheduled": [_entry(e) for e in view.entries],
        "delayed": _delayed(view.delayed),
        "waiting_eta": _waiting(view.waiting),
        "broker_settings": _broker_settings(view.settings),
        "notes": list(view.notes),
        "workers": [w.hostname for w in fleet.workers],
    }


def status_document(view: StatusView, *, broker: str | None) -> Json:
    """``deploykit status --json``."""
    return {
        **envelope("status", broker),
        "verdict": _verdict(view.verdict),
        "workers": [_worker(w) for w in view.fleet.workers],
        "discovery": _discovery(view.fleet.discovery),
        "queues": [_queue(q) for q in view.queues.queues],
        "queue_source": view.queues.source,
        "notes": [*view.queues.notes, *view.scheduled.notes],
        "delayed": _delayed(view.queues.delayed),
        "scheduled": [_entry(e) for e in view.scheduled.entries],
        "waiting_eta": _waiting(view.scheduled.waiting),
        "hazards": [_hazard(h) for h in view.hazards],
    }


# -- orchestration ----------------------------------------------------------------------------
def _refs(refs: Sequence[ConsumerRef]) -> list[Json]:
    return [{"worker": r.worker, "queue": r.queue} for r in refs]


def _eta_task(task: EtaTask) -> Json:
    return {
        "id": task.id,
        "name": task.name,
        "worker": task.worker,
        "queue": task.queue,
        "eta": _time(task.eta),
    }


def _outcome(result: DrainResult | ResumeResult | ShutdownResult | RestartResult | DeployResult) -> Json:
    return {"status": result.status, "exit_code": result.exit_code, "message": result.message}


def _drain_body(result: DrainResult) -> Json:
    remaining = result.remaining
    return {
        **_outcome(result),
        "mode": result.mode,
        "drain_id": result.drain_id,
        "workers": list(result.workers),
        "queues": list(result.queues),
        "cancelled": _refs(result.cancelled),
        "rolled_back": result.rolled_back,
        "elapsed": result.elapsed,
        "remaining": {
            "active": remaining.active,
            "reserved": remaining.reserved,
            "eta_waited": remaining.eta_waited,
            "ready": remaining.ready,
            "unacked": remaining.unacked,
            "incompatible": remaining.incompatible,
        },
        "held_eta": [_eta_task(t) for t in result.held_eta],
        "eta_fate": result.eta_fate,
        "lost_workers": list(result.lost_workers),
        "unresponsive": list(result.unresponsive),
        "not_restored": _refs(result.not_restored),
        "notes": list(result.notes),
    }


def _worker_shutdown(worker: WorkerShutdown) -> Json:
    return {
        "worker": worker.worker,
        "pid": worker.pid,
        "active": worker.active,
        "reserved": worker.reserved,
        "scheduled": worker.scheduled,
        "gone": worker.gone,
        "gone_after": worker.gone_after,
    }


def _shutdown_body(result: ShutdownResult) -> Json:
    return {
        **_outcome(result),
        "workers": [_worker_shutdown(w) for w in result.workers],
        "held": result.held,
        "returned": result.returned,
        "verified": result.verified,
        "elapsed": result.elapsed,
        "notes": list(result.notes),
        "verified_by": result.verified_by,
    }


def _batch(batch: BatchReport) -> Json:
    return {
        "index": batch.index,
        "workers": list(batch.workers),
        "status": batch.status,
        "drained_in": batch.drained_in,
        "shutdown_in": batch.shutdown_in,
        "held": batch.held,
        "returned": batch.returned,
        "restarts": [
            {
                "worker": r.worker,
                "target": r.target,
                "old_pid": r.old_pid,
                "new_pid": r.new_pid,
                "back_after": r.back_after,
            }
            for r in batch.restarts
        ],
        "error": batch.error,
    }


def drain_document(result: DrainResult, *, broker: str | None, record: str) -> Json:
    """``deploykit drain --json``; ``record`` says where the cancelled consumers are recorded."""
    return {**envelope("drain", broker), **_drain_body(result), "record": record}


def resume_document(result: ResumeResult, *, broker: str | None) -> Json:
    """``deploykit resume --json``."""
    return {
        **envelope("resume", broker),
        **_outcome(result),
        "restored": _refs(result.restored),
        "not_restored": _refs(result.not_restored),
        "forgotten": _refs(result.forgotten),
        "record": result.record,
    }


def shutdown_document(result: ShutdownResult, *, broker: str | None) -> Json:
    """``deploykit shutdown --json``."""
    return {**envelope("shutdown", broker), **_shutdown_body(result)}


def restart_document(result: RestartResult, *, broker: str | None) -> Json:
    """``deploykit restart --json``."""
    return {
        **envelope("restart", broker),
        **_outcome(result),
        "starter": result.starter,
        "batches": [_batch(b) for b in result.batches],
        "restarted": list(result.restarted),
        "untouched": list(result.untouched),
        "elapsed": result.elapsed,
        "dry_run": result.dry_run,
    }


def deploy_document(result: DeployResult, *, broker: str | None) -> Json:
    """``deploykit deploy --json``: the drain and the shutdown as in their own documents' bodies."""
    return {
        **envelope("deploy", broker),
        **_outcome(result),
        "stopped": list(result.stopped),
        "new_workers": list(result.new_workers),
        "drain": None if result.drain is None else _drain_body(result.drain),
        "shutdown": None if result.shutdown is None else _shutdown_body(result.shutdown),
        "command": list(result.command),
        "command_exit": result.command_exit,
        "elapsed": result.elapsed,
        "notes": list(result.notes),
    }


# -- health, scan and manifest ----------------------------------------------------------------
def health_document(kind: str, body: Mapping[str, Any], *, broker: str | None) -> Json:
    """``doctor --json`` and ``probe --json``: the envelope around their renderers' bodies
    (:func:`deploykit.output.doctor.doctor_document`, :func:`~deploykit.output.doctor.probe_document`)."""
    if kind not in ("doctor", "probe"):
        raise ValueError(f"not a health document: {kind}")
    return {**envelope(kind, broker), **body}


def snapshot_written_document(path: str, *, written: bool, tasks: int, beat: int) -> Json:
    """``manifest snapshot --json`` (the file was written, or was already up to date)."""
    return {
        "schema": schema_name("snapshot"),
        "path": path,
        "checked": False,
        "written": written,
        "tasks": tasks,
        "beat": beat,
    }


def snapshot_check_document(
    state: Staleness, *, path: str, tasks: int, beat: int, load_warnings: Sequence[str]
) -> Json:
    """``manifest snapshot --check --json``: is the committed file up to date?"""
    return {
        "schema": schema_name("snapshot"),
        "path": path,
        "checked": True,
        "written": False,
        "exists": state.exists,
        "stale": state.stale,
        "added": list(state.added),
        "removed": list(state.removed),
        "changed": list(state.changed),
        "beat_changed": state.beat_changed,
        "beat_added": list(state.beat_added),
        "beat_removed": list(state.beat_removed),
        "beat_modified": list(state.beat_modified),
        "load_warnings": list(load_warnings),
        "tasks": tasks,
        "beat": beat,
    }


def rules_document(rules: Sequence[Rule], pages: Mapping[str, str]) -> Json:
    """``manifest rules --json``: every rule ID with its default level, summary and page."""
    return {
        "schema": schema_name("rules"),
        "rules": [
            {"id": r.id, "level": r.level.value, "summary": r.summary, "docs": pages[r.id]} for r in rules
        ],
    }


# -- manifest registry ------------------------------------------------------------------------
def _registry_entry(entry: RegistryEntry) -> Json:
    return {
        "build": entry.build,
        "published_at": _epoch(entry.published_at),
        "tasks": entry.tasks,
        "size": entry.size,
        "problem": entry.problem,
    }


def _epoch(value: float | None) -> str | None:
    return None if value is None else _time(datetime.fromtimestamp(value, timezone.utc))


def publish_document(result: PublishResult, *, registry: str, limit: int) -> Json:
    """``manifest publish --json``: the entry stored and the builds dropped to stay within the limit."""
    return {
        "schema": schema_name("publish"),
        "registry": registry,
        "limit": limit,
        "entry": _registry_entry(result.entry),
        "replaced": result.replaced,
        "dropped": list(result.dropped),
        "kept_protected": list(result.kept_protected),
    }


def registry_document(entries: Sequence[RegistryEntry], *, registry: str) -> Json:
    """``manifest list --json``: every build in the registry, newest publish first."""
    return {
        "schema": schema_name("registry"),
        "registry": registry,
        "builds": [_registry_entry(e) for e in entries],
    }


# -- builds -----------------------------------------------------------------------------------
def _build_row(row: BuildRow) -> Json:
    messages = row.messages
    return {
        "build": row.build,
        "kind": row.kind,
        "state": row.state,
        "workers": list(row.workers),
        "messages": {
            "total": messages.total,
            "queues": dict(messages.queues),
            "unacked": messages.unacked,
            "held": dict(messages.held),
            "delayed": messages.delayed,
            "beat": messages.beat,
        },
        "latest_eta": _time(row.latest_eta),
        "manifest": row.manifest,
    }


def builds_document(view: BuildsView, *, broker: str | None) -> Json:
    """``deploykit builds --json``."""
    return {
        **envelope("builds", broker),
        "complete": not view.incomplete,
        "builds": [_build_row(row) for row in view.rows],
        "unread": [
            {"location": u.location, "messages": u.messages, "reason": u.reason, "remedy": u.remedy}
            for u in view.unread
        ],
        "read": view.read,
        "queues": list(view.queues),
        "registry": view.registry,
        "notes": list(view.notes),
    }
