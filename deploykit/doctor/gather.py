"""Gather an :class:`~deploykit.doctor.model.Audit`: the app's settings, what every live worker
really runs (``inspect conf`` / ``registered``), the broker's queues and policies, the ETA tasks
waiting now, and the process-manager files. Everything impure about ``doctor`` lives here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from deploykit.brokers.base import Broker, RawMessage
from deploykit.brokers.urls import broker_kind
from deploykit.doctor.model import (
    Audit,
    BrokerQueue,
    ConfigSource,
    EtaWait,
    ProcessManagerEntry,
    QueueDef,
    TaskPolicy,
)
from deploykit.fleet.base import Fleet

#: Task attributes asked from every worker (``inspect registered``), so per-task overrides count.
TASK_ATTRIBUTES = ("acks_late", "reject_on_worker_lost", "time_limit", "soft_time_limit")
_REGISTERED = re.compile(r"^(\S+)(?: \[(.*)\])?$")
_ATTRIBUTE = re.compile(r"(\w+)=(\S+)")


#: Every setting doctor's checks read, by its new-style name. Only these are read from the app
#: (never the whole configuration: with ``config_from_object("django.conf:settings")`` that holds
#: every Django setting, lazy translations included).
AUDITED_SETTINGS = (
    "accept_content",
    "broker_transport_options",
    "event_serializer",
    "result_accept_content",
    "result_backend",
    "result_serializer",
    "task_acks_late",
    "task_reject_on_worker_lost",
    "task_retry_on_worker_lost",
    "task_serializer",
    "task_soft_time_limit",
    "task_time_limit",
    "worker_detect_quorum_queues",
    "worker_disable_prefetch",
    "worker_enable_soft_shutdown_on_idle",
    "worker_eta_task_limit",
    "worker_prefetch_multiplier",
    "worker_soft_shutdown_timeout",
)


def plain(value: Any) -> Any:
    """Settings as JSON-like data, comparable with what workers report through ``conf``.

    Anything else is shown by type only (:func:`deploykit.userapp.safe_repr`), never evaluated.
    """
    from deploykit.userapp import plain_value

    return plain_value(value)


def _defaults() -> dict[str, Any]:
    from celery.app.defaults import DEFAULTS

    return {str(k): plain(v) for k, v in DEFAULTS.items()}


def _new_key(key: str) -> str:
    """A setting's new-style name: old names are converted; a ``CELERY_`` namespace (Django's
    ``config_from_object(..., namespace="CELERY")``, as a worker reports it) is dropped."""
    from celery.app.defaults import DEFAULTS

    try:
        from celery.app.defaults import _TO_NEW_KEY
    except ImportError:  # pragma: no cover - private name moved
        _TO_NEW_KEY = {}
    if key in _TO_NEW_KEY:
        return str(_TO_NEW_KEY[key]).lower()
    lower = key.lower()
    if lower not in DEFAULTS and lower.startswith("celery_") and lower[len("celery_") :] in DEFAULTS:
        return lower[len("celery_") :]
    return lower


def _normalise(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {_new_key(str(k)): v for k, v in settings.items()}


def _bool_or_none(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return True if text == "true" else False if text == "false" else None


def _float_or_none(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _task_option(task: Any, name: str) -> Any:
    """A task's option if it is plain data (a user property or object is not evaluated)."""
    value = getattr(task, name, None)
    return value if value is None or type(value) in (bool, int, float, str) else None


def source_from_app(app: Any) -> ConfigSource:
    """The app's audited settings and its tasks' options.

    ``app`` is already set up as a worker does (:func:`deploykit.userapp.load_app`): only the
    :data:`AUDITED_SETTINGS` are read, following the app's namespace (``CELERY_TASK_ACKS_LATE``).
    Call this before anything edits ``app.conf``.
    """
    from deploykit.userapp import guarded, prepare_app, read_settings

    prepare_app(app)
    values, explicit = read_settings(app, AUDITED_SETTINGS)
    settings = {**_defaults(), **{key: plain(value) for key, value in values.items()}}
    tasks = []
    with guarded("cannot read the app's task options"):
        for name, task in sorted(app.tasks.items()):
            tasks.append(
                TaskPolicy(
                    name=str(name),
                    acks_late=_bool_or_none(_task_option(task, "acks_late")),
                    reject_on_worker_lost=_bool_or_none(_task_option(task, "reject_on_worker_lost")),
                    time_limit=_float_or_none(_task_option(task, "time_limit")),
                    soft_time_limit=_float_or_none(_task_option(task, "soft_time_limit")),
                )
            )
    return ConfigSource("app", settings, explicit, tuple(tasks))


def parse_registered(reply: Any) -> tuple[TaskPolicy, ...]:
    """``['proj.add [acks_late=True time_limit=30]', …]`` (``inspect registered``) → policies."""
    tasks = []
    for line in reply if isinstance(reply, list) else []:
        match = _REGISTERED.match(str(line))
        if not match:
            continue
        attrs = dict(_ATTRIBUTE.findall(match.group(2) or ""))
        tasks.append(
            TaskPolicy(
                name=match.group(1),
                acks_late=_bool_or_none(attrs.get("acks_late")),
                reject_on_worker_lost=_bool_or_none(attrs.get("reject_on_worker_lost")),
                time_limit=_float_or_none(attrs.get("time_limit")),
                soft_time_limit=_float_or_none(attrs.get("soft_time_limit")),
            )
        )
    return tuple(tasks)


def source_from_worker(node: str, conf: Mapping[str, Any], registered: Any = None) -> ConfigSource:
    """A worker's effective settings: Celery's defaults overlaid with what ``conf`` reported."""
    changed = _normalise(conf)
    return ConfigSource(
        f"worker {node}",
        {**_defaults(), **changed},
        frozenset(changed),
        parse_registered(registered),
    )


def _queue_type(arguments: Any) -> str | None:
    if isinstance(arguments, Mapping) and arguments.get("x-queue-type"):
        return str(arguments["x-queue-type"])
    return None


def queue_defs_from_app(app: Any) -> list[QueueDef]:
    """The queues the app declares (after its setup: ``AppConfig.ready()`` may declare them)."""
    defs = []
    try:
        queues = list(app.amqp.queues.values())
    except Exception:  # an unusual queue setup still gets the rest of the audit
        return []
    for queue in queues:
        exchange = getattr(queue, "exchange", None)
        defs.append(
            QueueDef(
                name=str(queue.name),
                exchange=getattr(exchange, "name", None),
                exchange_type=getattr(exchange, "type", None),
                queue_type=_queue_type(getattr(queue, "queue_arguments", None)),
                origin="app",
            )
        )
    return defs


def queue_defs_from_worker(node: str, active_queues: Any) -> list[QueueDef]:
    """The queues a worker consumes from, as its ``active_queues`` reply declares them (a
    malformed entry is dropped: :func:`deploykit.fleet.replies.declared_queues`)."""
    from deploykit.fleet.replies import declared_queues

    defs = []
    for queue in declared_queues(active_queues):
        raw_exchange = queue.get("exchange")
        exchange: Mapping[str, Any] = raw_exchange if isinstance(raw_exchange, Mapping) else {}
        defs.append(
            QueueDef(
                name=str(queue.get("name")),
                exchange=exchange.get("name"),
                exchange_type=exchange.get("type"),
                queue_type=_queue_type(queue.get("queue_arguments")),
                origin=f"worker {node}",
            )
        )
    return defs


def eta_waits(
    scheduled_entries: Iterable[Any], unacked: Sequence[RawMessage], now: datetime
) -> list[EtaWait]:
    """Every waiting ETA task with how long it stays unacknowledged (delivery → ETA)."""
    from deploykit.messages import task_headers

    delivered: dict[str, float] = {}
    for raw in unacked:
        headers = task_headers(raw.headers)
        if headers.id and raw.delivered_at is not None:
            delivered[headers.id] = raw.delivered_at
    waits = []
    for entry in scheduled_entries:
        if entry.eta is None:
            continue
        since = delivered.get(entry.id or "")
        start = since if since is not None else now.timestamp()
        waits.append(
            EtaWait(
                id=entry.id,
                name=entry.name,
                queue=entry.queue,
                eta=entry.eta,
                held_for=max(entry.eta.timestamp() - start, 0.0),
                location=entry.location,
                worker=entry.worker,
            )
        )
    return waits


def gather_audit(
    *,
    app_source: ConfigSource | None,
    app_queue_defs: Sequence[QueueDef] = (),
    broker: Broker | None,
    fleet: Fleet | None,
    broker_url: str | None,
    management_url: str | None,
    now: datetime,
    process_managers: Sequence[ProcessManagerEntry] = (),
    notes: Sequence[str] = (),
    control_exchange: str = "celery",
    timeout: float = 5.0,
    offline_reason: str = "offline: the broker and the workers were not asked",
) -> Audit:
    """Ask the broker and the workers; without them (offline) audit the app and the files only,
    saying why in one note (``offline_reason``)."""
    from deploykit.inspection import collect_queues, collect_scheduled, discover

    kind = broker_kind(broker_url)
    all_notes = list(notes)
    if broker is None or fleet is None:
        return Audit(
            broker_kind=kind,
            app=app_source,
            queue_defs=tuple(app_queue_defs),
            process_managers=tuple(process_managers),
            notes=(*all_notes, offline_reason),
            online=False,
        )
    from deploykit.fleet.replies import parse_worker
    from deploykit.inspection import FleetView

    discovery = discover(fleet, broker, control_exchange)
    nodes = list(discovery.nodes)
    commands: dict[str, Mapping[str, Any]] = {
        "conf": {"with_defaults": False},
        "registered": {"taskinfoitems": list(TASK_ATTRIBUTES)},
        "active_queues": {},
        "scheduled": {},
        "stats": {},
    }
    replies = fleet.gather(commands, nodes)
    workers = []
    defs = list(app_queue_defs)
    without_conf = []
    for node in nodes:
        conf = replies.get("conf", node)
        if isinstance(conf, Mapping) and "error" not in conf:
            workers.append(source_from_worker(node, conf, replies.get("registered", node)))
        else:
            without_conf.append(node)
        defs.extend(queue_defs_from_worker(node, replies.get("active_queues", node)))
    fleet_view = FleetView(
        workers=tuple(parse_worker(node, replies) for node in nodes),
        discovery=discovery,
        partial=tuple(replies.missing),
    )
    if not nodes:
        all_notes.append("no worker answered: only the app's settings were audited")
    if without_conf:
        all_notes.append(
            "no conf reply from " + ", ".join(without_conf) + ": their settings were not audited"
        )
    queues = collect_queues(broker, fleet_view, [d.name for d in app_queue_defs])
    all_notes.extend(queues.notes)
    unacked = list(broker.unacked_messages())
    # ETA tasks still in their queues count too: no worker has taken them yet, but the first one
    # to do so holds them unacknowledged until they are due.
    scheduled = collect_scheduled(
        broker, fleet_view, now, unacked=unacked, delayed=queues.delayed, queues=queues.queues
    )
    broker_settings = broker.settings()
    report = broker.queue_stats([row.name for row in queues.queues if row.exists])
    policies: Mapping[str, Any] = {}
    if kind == "rabbitmq" and management_url and broker_url:
        from deploykit.brokers.rabbitmq_policies import read_queue_policies

        found, why_not = read_queue_policies(management_url, broker_url, timeout=max(timeout, 2.0))
        policies = found or {}
        if why_not:
            all_notes.append(why_not)
    broker_queues = []
    for stats in report.queues:
        policy = policies.get(stats.name)
        broker_queues.append(
            BrokerQueue(
                name=stats.name,
                queue_type=stats.queue_type,
                arguments=dict(stats.arguments),
                policy=getattr(policy, "policy", None),
                policy_definition=dict(getattr(policy, "definition", {}) or {}),
                consumers=stats.consumers,
            )
        )
    return Audit(
        broker_kind=kind,
        app=app_source,
        workers=tuple(workers),
        queue_defs=tuple(defs),
        broker_queues=tuple(broker_queues),
        consumer_timeout=broker_settings.consumer_timeout,
        consumer_timeout_source=broker_settings.consumer_timeout_source,
        visibility_timeout=broker_settings.visibility_timeout,
        etas=tuple(eta_waits(scheduled.entries, unacked, now)),
        delayed_messages=queues.delayed.messages if queues.delayed else None,
        process_managers=tuple(process_managers),
        workers_without_conf=tuple(without_conf),
        notes=tuple(all_notes),
    )
