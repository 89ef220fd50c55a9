"""What is in flight: workers, queues and scheduled (ETA) tasks, from the broker and the fleet.

The core of ``deploykit workers | queues | scheduled | status``. It sees the broker and the
workers only through :class:`~deploykit.brokers.base.Broker` and
:class:`~deploykit.fleet.base.Fleet`, so it is tested against fakes and, for real, against live
workers. The workers' replies are parsed by :mod:`deploykit.fleet.replies`; this module builds
the views from them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from deploykit.brokers.base import (
    Broker,
    BrokerSettings,
    DelayedStore,
    QueueStats,
    RawMessage,
    is_delayed_queue,
    is_internal_queue,
)
from deploykit.errors import Refused
from deploykit.fleet.base import Discovery, Fleet
from deploykit.fleet.replies import WORKER_COMMANDS, HeldTask, WorkerInfo, parse_worker
from deploykit.messages import TaskHeaders, shorten, task_headers

#: At most this many waiting messages are read to find the ETA ones no worker has taken yet
#: (``scheduled``/``status`` stay quick on a deep queue; ``deploykit scan`` reads them all).
WAITING_READ_LIMIT = 100_000


# --------------------------------------------------------------------------------------------
# data
@dataclass(frozen=True)
class FleetView:
    workers: tuple[WorkerInfo, ...]
    discovery: Discovery
    #: Nodes that answered the ping but not every inspect command.
    partial: tuple[str, ...] = ()

    @property
    def held_tasks(self) -> list[HeldTask]:
        return [task for worker in self.workers for task in worker.tasks]


@dataclass(frozen=True)
class QueueRow:
    """One queue, as the broker and the workers see it."""

    name: str
    ready: int | None
    unacked: int | None
    #: Of the unacked ones, ETA/countdown tasks held by workers.
    eta_held: int | None
    consumers: int | None
    #: Where ``consumers`` comes from: ``broker`` or ``workers`` (Redis has no consumer count).
    consumers_source: str | None
    consumer_workers: tuple[str, ...]
    queue_type: str | None
    exists: bool
    #: Why the queue is listed: ``workers`` (consumed), ``app`` (defined or routed to), ``broker``.
    listed_by: tuple[str, ...]
    ready_by_priority: Mapping[int, int] | None = None


@dataclass(frozen=True)
class QueuesView:
    queues: tuple[QueueRow, ...]
    source: str
    notes: tuple[str, ...]
    delayed: DelayedStore | None


@dataclass(frozen=True)
class Hazard:
    """A known way this scheduled task will misbehave."""

    code: str
    message: str


@dataclass(frozen=True)
class ScheduledEntry:
    """An ETA/countdown task wherever it waits."""

    id: str | None
    name: str | None
    eta: datetime | None
    seconds_left: float | None
    #: ``worker`` (in a worker's timer), ``broker-unacked`` (in Redis' unacked hash with no live
    #: worker holding it: its worker died) or ``queue`` (still waiting in the queue: no worker has
    #: taken it yet).
    location: str
    worker: str | None
    queue: str | None
    args: str | None
    kwargs: str | None
    hazards: tuple[Hazard, ...] = ()
    #: The build that published it (its ``deploykit_build`` header), when read from the broker;
    #: ``None`` when unstamped, or held by a worker (a ``scheduled`` reply carries no headers).
    build: str | None = None


@dataclass(frozen=True)
class WaitingEta:
    """ETA messages still waiting in their queues: no worker has taken them yet."""

    #: ETA messages found per queue, read from the ready lists (Redis, filesystem).
    by_queue: Mapping[str, int]
    #: Waiting messages left unread (past ``WAITING_READ_LIMIT``): their ETAs are not counted.
    unread: int = 0
    #: Queues whose messages cannot be read without consuming them (RabbitMQ), with their ready
    #: counts: some of those may be ETA messages, which only ``scan --peek`` can tell.
    unlisted: Mapping[str, int | None] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.by_queue.values())


@dataclass(frozen=True)
class ScheduledView:
    entries: tuple[ScheduledEntry, ...]
    delayed: DelayedStore | None
    settings: BrokerSettings
    notes: tuple[str, ...] = ()
    waiting: WaitingEta | None = None

    @property
    def held(self) -> int:
        """Entries a worker holds, or held (orphans in the unacked store), as opposed to queued."""
        return sum(e.location != "queue" for e in self.entries)


@dataclass(frozen=True)
class Verdict:
    busy: bool
    summary: str
    counts: Mapping[str, int]
    unknown: tuple[str, ...] = ()


@dataclass(frozen=True)
class StatusView:
    fleet: FleetView
    queues: QueuesView
    scheduled: ScheduledView
    verdict: Verdict
    hazards: tuple[Hazard, ...] = field(default_factory=tuple)


# --------------------------------------------------------------------------------------------
# fleet
def discover(fleet: Fleet, broker: Broker, control_exchange: str = "celery") -> Discovery:
    """Find the online workers, without waiting out the timeout when the broker lists them."""
    expected = broker.worker_mailboxes(control_exchange)
    if expected is None:
        return Discovery(tuple(fleet.ping(None)), method="broadcast")
    expected = sorted(set(expected))
    answered = fleet.ping(expected) if expected else []
    silent = tuple(node for node in expected if node not in answered)
    return Discovery(tuple(sorted(answered)), method="broker-mailboxes", silent=silent)


def collect_fleet(
    fleet: Fleet,
    broker: Broker,
    control_exchange: str = "celery",
    commands: Mapping[str, Mapping[str, Any]] = WORKER_COMMANDS,
) -> FleetView:
    """Discover the workers, then ask them everything in a single round trip.

    ``commands`` narrows what is asked (a subset of :data:`WORKER_COMMANDS`); what is not asked
    stays unknown (``None``) in each :class:`WorkerInfo`.
    """
    discovery = discover(fleet, broker, control_exchange)
    replies = fleet.gather(commands, list(discovery.nodes))
    workers = tuple(parse_worker(node, replies) for node in discovery.nodes)
    return FleetView(workers=workers, discovery=discovery, partial=tuple(replies.missing))


# --------------------------------------------------------------------------------------------
# queues
def app_queue_names(app: Any) -> list[str]:
    """Queues the app defines (``task_queues``, the default queue) or routes to (``task_routes``)."""
    if app is None:
        return []
    names: set[str] = set()
    conf = app.conf
    try:
        names.update(str(name) for name in app.amqp.queues)
    except Exception:  # an app with an unusual queue setup still gets the rest
        pass
    if conf.task_default_queue:
        names.add(str(conf.task_default_queue))
    routes = conf.task_routes
    for route_map in routes if isinstance(routes, (list, tuple)) else [routes]:
        if isinstance(route_map, Mapping):
            for route in route_map.values():
                queue = (
                    route.get("queue")
                    if isinstance(route, Mapping)
                    else route
                    if isinstance(route, str)
                    else None
                )
                queue_name = getattr(queue, "name", queue)
                if isinstance(queue_name, str):
                    names.add(queue_name)
    return sorted(n for n in names if not is_internal_queue(n))


def collect_queues(
    broker: Broker,
    fleet_view: FleetView | None,
    app_queues: Iterable[str] = (),
    only: Sequence[str] = (),
) -> QueuesView:
    """Every relevant queue with ready, unacked, ETA-held and consumer counts."""
    listed: dict[str, set[str]] = {}
    consumers_by_queue: dict[str, set[str]] = {}
    for worker in fleet_view.workers if fleet_view else ():
        for queue in worker.queues:
            listed.setdefault(queue, set()).add("workers")
            consumers_by_queue.setdefault(queue, set()).add(worker.hostname)
    for queue in app_queues:
        listed.setdefault(queue, set()).add("app")
    for queue in broker.known_queues():
        if not is_delayed_queue(queue):
            listed.setdefault(queue, set()).add("broker")
    names = sorted(n for n in listed if not is_internal_queue(n))
    if only:
        names = [n for n in names if n in only] + [n for n in only if n not in listed]
    report = broker.queue_stats(names)
    stats_by_name: dict[str, QueueStats] = {s.name: s for s in report.queues}

    eta_from_workers: Counter[str] = Counter()
    for task in fleet_view.held_tasks if fleet_view else ():
        if task.state == "scheduled" and task.queue:
            eta_from_workers[task.queue] += 1

    rows = []
    for name in names:
        stats = stats_by_name.get(name, QueueStats(name=name, exists=False))
        worker_consumers = tuple(sorted(consumers_by_queue.get(name, ())))
        if stats.consumers is not None:
            consumers, consumers_source = stats.consumers, "broker"
        elif fleet_view is not None:
            consumers, consumers_source = len(worker_consumers), "workers"
        else:
            consumers, consumers_source = None, None
        eta_held = stats.unacked_eta
        if eta_held is None and fleet_view is not None:
            eta_held = eta_from_workers.get(name, 0)
        rows.append(
            QueueRow(
                name=name,
                ready=stats.ready,
                unacked=stats.unacked,
                eta_held=eta_held,
                consumers=consumers,
                consumers_source=consumers_source,
                consumer_workers=worker_consumers,
                queue_type=stats.queue_type,
                exists=stats.exists,
                listed_by=tuple(sorted(listed.get(name, {"argument"}))),
                ready_by_priority=stats.ready_by_priority,
            )
        )
    return QueuesView(tuple(rows), report.source, report.notes, report.delayed)


# --------------------------------------------------------------------------------------------
# scheduled
def _hazards_for(
    kind: str,
    settings: BrokerSettings,
    eta: datetime | None,
    now: datetime,
    delivered_at: datetime | None,
) -> list[Hazard]:
    if eta is None:
        return []
    hazards = []
    if kind == "redis" and settings.visibility_timeout is not None:
        since = delivered_at or now
        redeliver_at = since + timedelta(seconds=settings.visibility_timeout)
        if eta > redeliver_at:
            hazards.append(
                Hazard(
                    "ETA_BEYOND_VISIBILITY_TIMEOUT",
                    f"due {eta:%Y-%m-%d %H:%M:%S}Z, after the visibility timeout "
                    f"({settings.visibility_timeout:g}s) redelivers it at {redeliver_at:%H:%M:%S}Z: "
                    "it will run twice (or loop); raise visibility_timeout above the longest ETA",
                )
            )
    if kind == "rabbitmq" and settings.consumer_timeout is not None:
        held_for = (eta - (delivered_at or now)).total_seconds()
        if held_for > settings.consumer_timeout:
            hazards.append(
                Hazard(
                    "ETA_BEYOND_CONSUMER_TIMEOUT",
                    f"held unacked for {held_for:.0f}s, longer than RabbitMQ's consumer_timeout "
                    f"({settings.consumer_timeout:g}s, {settings.consumer_timeout_source or 'default'}): "
                    "the channel will be closed and every message it holds redelivered",
                )
            )
    return hazards


def _broker_entry(
    headers: TaskHeaders,
    eta: datetime,
    now: datetime,
    *,
    location: str,
    queue: str | None,
    hazards: Sequence[Hazard],
) -> ScheduledEntry:
    """A scheduled entry for an ETA message read from the broker (no worker holds it)."""
    return ScheduledEntry(
        id=headers.id,
        name=headers.name,
        eta=eta,
        seconds_left=(eta - now).total_seconds(),
        location=location,
        worker=None,
        queue=queue,
        args=shorten(headers.argsrepr),
        kwargs=shorten(headers.kwargsrepr),
        hazards=tuple(hazards),
        build=headers.build,
    )


def _queued_eta(
    broker: Broker,
    queues: Sequence[QueueRow],
    settings: BrokerSettings,
    now: datetime,
    limit: int | None = None,
) -> tuple[list[ScheduledEntry], WaitingEta | None]:
    """ETA messages waiting in ``queues`` that no worker has taken yet, read without consuming.

    The ETA comes from the same ``eta`` header the scan reads (:func:`task_headers`). Brokers
    that cannot read without consuming (RabbitMQ) get their ready counts reported instead.
    """
    entries: list[ScheduledEntry] = []
    by_queue: Counter[str] = Counter()
    unlisted: dict[str, int | None] = {}
    unread = 0
    budget = WAITING_READ_LIMIT if limit is None else limit
    for queue in queues:
        if not queue.exists or queue.ready == 0:
            continue
        read = 0
        try:
            for raw in broker.iter_messages(queue.name):
                if read >= budget:
                    break
                read += 1
                headers = task_headers(raw.headers)
                if headers.eta is None:
                    continue
                by_queue[queue.name] += 1
                entries.append(
                    _broker_entry(
                        headers,
                        headers.eta,
                        now,
                        location="queue",
                        queue=queue.name,
                        hazards=_hazards_for(broker.kind, settings, headers.eta, now, None),
                    )
                )
        except Refused:
            unlisted[queue.name] = queue.ready
            continue
        budget -= read
        if queue.ready is not None and queue.ready > read:
            unread += queue.ready - read
    if not by_queue and not unlisted and not unread:
        return entries, None
    return entries, WaitingEta(by_queue=dict(by_queue), unread=unread, unlisted=unlisted)


def _waiting_notes(kind: str, waiting: WaitingEta | None) -> list[str]:
    if waiting is None:
        return []
    notes = []
    if waiting.unread:
        notes.append(
            f"{waiting.unread} waiting message(s) not read (past the first {WAITING_READ_LIMIT}): "
            "ETA ones among them are not counted; `deploykit scan` reads them all"
        )
    ready = [(name, n) for name, n in waiting.unlisted.items() if n]
    if ready:
        where = ", ".join(f"{name} ({n})" for name, n in ready)
        notes.append(
            f"{sum(n for _, n in ready)} message(s) wait in {where} with no worker holding them; "
            f"{kind} cannot show which carry an ETA without consuming them "
            "(`deploykit scan --peek` samples them)"
        )
    return notes


def collect_scheduled(
    broker: Broker,
    fleet_view: FleetView,
    now: datetime,
    within: float | None = None,
    unacked: Iterable[RawMessage] | None = None,
    delayed: DelayedStore | None = None,
    queues: Sequence[QueueRow] = (),
) -> ScheduledView:
    """ETA/countdown tasks held by workers, orphaned in the broker, or still waiting in
    ``queues`` (not taken by any worker yet), sorted by due time."""
    settings = broker.settings()
    if unacked is None:
        unacked = broker.unacked_messages()
    held_ids = {task.id for task in fleet_view.held_tasks if task.id}
    delivered: dict[str, datetime] = {}
    orphans: list[ScheduledEntry] = []
    for raw in unacked:
        headers = task_headers(raw.headers)
        if headers.id and raw.delivered_at is not None:
            delivered[headers.id] = datetime.fromtimestamp(raw.delivered_at, tz=timezone.utc)
        if headers.eta is None or (headers.id in held_ids):
            continue
        since = delivered.get(headers.id or "")
        hazards = _hazards_for(broker.kind, settings, headers.eta, now, since)
        if settings.visibility_timeout is not None and since is not None:
            back_at = since + timedelta(seconds=settings.visibility_timeout)
            hazards.insert(
                0,
                Hazard(
                    "ORPHANED_UNACKED",
                    "no live worker holds it (its worker died); back in the queue at "
                    f"{back_at:%Y-%m-%d %H:%M:%S}Z when the visibility timeout expires",
                ),
            )
        orphans.append(
            _broker_entry(
                headers, headers.eta, now, location="broker-unacked", queue=raw.queue, hazards=hazards
            )
        )
    queued, waiting = _queued_eta(broker, queues, settings, now)
    known = held_ids | {o.id for o in orphans if o.id}
    # A message taken by a worker between the two reads is listed once, as held.
    entries = [*orphans, *(e for e in queued if e.id is None or e.id not in known)]
    for task in fleet_view.held_tasks:
        if task.state != "scheduled":
            continue
        hazards = _hazards_for(broker.kind, settings, task.eta, now, delivered.get(task.id or ""))
        entries.append(
            ScheduledEntry(
                id=task.id,
                name=task.name,
                eta=task.eta,
                seconds_left=(task.eta - now).total_seconds() if task.eta else None,
                location="worker",
                worker=task.worker,
                queue=task.queue,
                args=shorten(task.args),
                kwargs=shorten(task.kwargs),
                hazards=tuple(hazards),
            )
        )
    if within is not None:
        entries = [e for e in entries if e.seconds_left is not None and e.seconds_left <= within]
    far_future = datetime.max.replace(tzinfo=timezone.utc)
    entries.sort(key=lambda e: (e.eta or far_future, e.id or ""))
    notes = []
    if delayed is not None and delayed.messages:
        notes.append(
            f"{delayed.messages} ETA message(s) wait in the broker's native delayed-delivery queues "
            "(celery_delayed_*); RabbitMQ cannot list them without consuming them, so they are "
            "counted, not listed"
        )
    notes.extend(_waiting_notes(broker.kind, waiting))
    return ScheduledView(tuple(entries), delayed, settings, tuple(notes), waiting)


# --------------------------------------------------------------------------------------------
# status
def verdict(fleet_view: FleetView, queues: QueuesView, scheduled: ScheduledView) -> Verdict:
    """Idle or busy, with the numbers."""
    counts: Counter[str] = Counter()
    for worker in fleet_view.workers:
        counts["active"] += worker.active or 0
        counts["reserved"] += worker.reserved or 0
    counts["scheduled"] = len(scheduled.entries) + (
        scheduled.delayed.messages or 0 if scheduled.delayed else 0
    )
    # ETA messages still in a queue are counted as scheduled and, being there, as ready too.
    counts["scheduled_in_queues"] = len(scheduled.entries) - scheduled.held
    unknown = []
    for queue in queues.queues:
        counts["ready"] += queue.ready or 0
        counts["unacked"] += queue.unacked or 0
        if queue.unacked is None and queue.exists:
            unknown.append(f"unacked in {queue.name}")
    counts["workers"] = len(fleet_view.workers)
    busy = any(counts[k] for k in ("active", "reserved", "scheduled", "ready", "unacked"))
    parts = [f"{counts[k]} {k}" for k in ("active", "reserved", "scheduled", "ready", "unacked")]
    if counts["scheduled_in_queues"]:
        parts[2] += f" ({counts['scheduled_in_queues']} still in queues)"
    summary = ("busy" if busy else "idle") + f": {counts['workers']} worker(s), " + ", ".join(parts)
    if unknown:
        summary += " (unknown: " + ", ".join(unknown) + ")"
    return Verdict(busy=busy, summary=summary, counts=dict(counts), unknown=tuple(unknown))


def collect_status(
    broker: Broker,
    fleet: Fleet,
    now: datetime,
    app_queues: Iterable[str] = (),
    control_exchange: str = "celery",
) -> StatusView:
    """Everything a person wants to see before a release, in one pass."""
    fleet_view = collect_fleet(fleet, broker, control_exchange)
    queues = collect_queues(broker, fleet_view, app_queues)
    scheduled = collect_scheduled(broker, fleet_view, now, delayed=queues.delayed, queues=queues.queues)
    hazards = [h for e in scheduled.entries for h in e.hazards]
    if fleet_view.discovery.silent:
        hazards.append(
            Hazard(
                "SILENT_MAILBOX",
                "the broker lists mailboxes of workers that did not answer: "
                + ", ".join(fleet_view.discovery.silent)
                + " (stopped, hung, or stale entries)",
            )
        )
    for queue in queues.queues:
        if queue.exists and (queue.ready or 0) > 0 and queue.consumers == 0:
            hazards.append(
                Hazard(
                    "NO_CONSUMER", f"queue {queue.name} has {queue.ready} ready message(s) and no consumer"
                )
            )
    return StatusView(fleet_view, queues, scheduled, verdict(fleet_view, queues, scheduled), tuple(hazards))
