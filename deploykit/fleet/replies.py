"""Workers' remote-control replies, parsed into typed values: the one place that knows their shapes.

Replies are whatever a worker sent back (JSON-decoded, never unpickled: see
:data:`deploykit.fleet.control.SAFE_ACCEPT`), so every parser accepts any value and treats a
malformed or missing reply as "unknown" (``None``, empty) instead of failing. The shapes are
Celery's (``celery/worker/control.py``):

* ``stats``: a mapping with ``pid``, ``prefetch_count``, ``uptime`` and ``pool``
  (``implementation``, ``max-concurrency``), and ``deploykit`` (``{"build": <id>}``) from a worker
  whose app called :func:`deploykit.celery.install` with a build;
* ``active_queues``: a list of ``kombu.Queue.as_dict()`` mappings;
* ``active`` / ``reserved``: lists of request infos (``celery/worker/request.py``, ``Request.info``);
* ``scheduled``: a list of ``{"eta", "priority", "request": <request info>}``;
* ``registered``: a list of ``"<task name> [attribute=value …]"`` strings;
* ``report``: ``{"ok": "<software -> celery:5.x …>"}``;
* a control command's answer: ``{"ok": …}`` or ``{"error": …}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from deploykit.brokers.base import is_internal_queue
from deploykit.celery import STATS_KEY, validate_build
from deploykit.fleet.base import Replies
from deploykit.messages import parse_time

#: The inspect commands :func:`held_tasks` reads, all sent at once (one round trip).
HELD_COMMANDS: Mapping[str, Mapping[str, Any]] = {"active": {}, "reserved": {}, "scheduled": {}}

#: The inspect commands :func:`parse_worker` reads, all sent at once (one round trip).
WORKER_COMMANDS: Mapping[str, Mapping[str, Any]] = {
    "stats": {},
    "active_queues": {},
    **HELD_COMMANDS,
    "report": {},
}

_CELERY_VERSION = re.compile(r"celery:(\S+)")


@dataclass(frozen=True)
class HeldTask:
    """A task a worker holds in memory: running (active), reserved/prefetched, or ETA-scheduled."""

    id: str | None
    name: str | None
    worker: str
    state: str  # "active" | "reserved" | "scheduled"
    queue: str | None
    eta: datetime | None = None
    args: str | None = None
    kwargs: str | None = None
    priority: int | None = None
    acknowledged: bool | None = None


@dataclass(frozen=True)
class WorkerInfo:
    """One online worker."""

    hostname: str
    pid: int | None
    pool: str | None
    concurrency: int | None
    prefetch_count: int | None
    queues: tuple[str, ...]
    active: int | None
    reserved: int | None
    scheduled: int | None
    uptime: float | None
    celery_version: str | None
    tasks: tuple[HeldTask, ...] = ()
    #: True when some of the inspect commands got no answer in time.
    partial: bool = False
    #: The build id the worker advertises (:mod:`deploykit.celery`); ``None``: none, or unknown.
    build: str | None = None


# --------------------------------------------------------------------------------------------
# one reply each
def worker_pid(stats: Any) -> int | None:
    """The worker's main process id from its ``stats`` reply."""
    pid = stats.get("pid") if isinstance(stats, Mapping) else None
    return pid if isinstance(pid, int) and not isinstance(pid, bool) else None


def worker_build(stats: Any) -> str | None:
    """The build id a worker advertises in its ``stats`` reply (:data:`deploykit.celery.STATS_KEY`);
    ``None`` when it advertises none or an invalid one (never trusted blindly: it is printed)."""
    entry = stats.get(STATS_KEY) if isinstance(stats, Mapping) else None
    build = entry.get("build") if isinstance(entry, Mapping) else None
    try:
        return validate_build(build)
    except ValueError:
        return None


def _pool_name(implementation: Any) -> str | None:
    if not isinstance(implementation, str):
        return None
    # 'celery.concurrency.prefork:TaskPool' -> 'prefork'
    module = implementation.split(":")[0]
    return module.rsplit(".", 1)[-1]


def declared_queues(active_queues: Any) -> list[Mapping[str, Any]]:
    """The queue mappings of an ``active_queues`` reply (anything else is dropped)."""
    if not isinstance(active_queues, list):
        return []
    return [item for item in active_queues if isinstance(item, Mapping)]


def consumed_queues(active_queues: Any) -> dict[str, dict[str, Any]]:
    """``active_queues`` reply of one worker -> ``{queue name: Queue.as_dict()}`` (task queues only)."""
    queues: dict[str, dict[str, Any]] = {}
    for item in declared_queues(active_queues):
        name = item.get("name")
        if isinstance(name, str) and not is_internal_queue(name):
            queues[name] = dict(item)
    return queues


def registered_names(registered: Any) -> set[str] | None:
    """Task names of a ``registered`` reply (attributes after the name dropped); ``None``: no reply."""
    if not isinstance(registered, list):
        return None
    return {str(item).split(" ", 1)[0] for item in registered}


def celery_version(report: Any) -> str | None:
    """The Celery version in a ``report`` reply."""
    if isinstance(report, Mapping) and isinstance(report.get("ok"), str):
        match = _CELERY_VERSION.search(report["ok"])
        return match.group(1) if match else None
    return None


def acknowledged(reply: Any, ok: str | None = None) -> bool:
    """True for a control reply ``{'ok': …}`` (with ``ok``: exactly that text)."""
    if not isinstance(reply, Mapping) or "ok" not in reply or "error" in reply:
        return False
    return ok is None or reply["ok"] == ok


def refused(reply: Any) -> bool:
    """True for a control reply ``{'error': …}``."""
    return isinstance(reply, Mapping) and "error" in reply


# --------------------------------------------------------------------------------------------
# held tasks
def _queue_for(delivery_info: Any, declared: Sequence[Mapping[str, Any]]) -> str | None:
    """The queue a delivered message came from, matched against the worker's consumed queues."""
    if not isinstance(delivery_info, Mapping):
        return None
    exchange = delivery_info.get("exchange") or ""
    routing_key = delivery_info.get("routing_key")
    for queue in declared:
        q_exchange = queue.get("exchange") or {}
        q_exchange_name = q_exchange.get("name", "") if isinstance(q_exchange, Mapping) else ""
        if queue.get("routing_key") == routing_key and (q_exchange_name or "") == exchange:
            return str(queue.get("name"))
    if not exchange and isinstance(routing_key, str):
        return routing_key
    names = [str(q.get("name")) for q in declared]
    if isinstance(routing_key, str) and routing_key in names:
        return routing_key
    # Native delayed delivery rewrites the routing key to '<28 bits>.<rk>'
    # (kombu/transport/native_delayed_delivery.py, calculate_routing_key).
    if isinstance(routing_key, str) and "." in routing_key:
        tail = routing_key.rsplit(".", 1)[-1]
        if tail in names:
            return tail
    return routing_key if isinstance(routing_key, str) else None


def _repr_args(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):  # already a repr (safe=True, or argsrepr)
        return value
    return repr(tuple(value)) if isinstance(value, list) else repr(value)


def _held(
    info: Any, worker: str, state: str, declared: Sequence[Mapping[str, Any]], eta: Any = None
) -> HeldTask:
    request = info if isinstance(info, Mapping) else {}
    delivery = request.get("delivery_info")
    priority = delivery.get("priority") if isinstance(delivery, Mapping) else None
    return HeldTask(
        id=request.get("id"),
        # 'type' is the real task name; 'name' may be a shadow name (celery/worker/request.py, Request.info).
        name=request.get("type") or request.get("name"),
        worker=worker,
        state=state,
        queue=_queue_for(delivery, declared),
        eta=parse_time(eta),
        args=_repr_args(request.get("args")),
        kwargs=_repr_args(request.get("kwargs")),
        priority=priority if isinstance(priority, int) else None,
        acknowledged=request.get("acknowledged"),
    )


def _held_tasks(node: str, replies: Replies, declared: Sequence[Mapping[str, Any]]) -> list[HeldTask]:
    active = replies.get("active", node)
    reserved = replies.get("reserved", node)
    scheduled = replies.get("scheduled", node)
    tasks: list[HeldTask] = []
    for item in active if isinstance(active, list) else []:
        tasks.append(_held(item, node, "active", declared))
    for item in reserved if isinstance(reserved, list) else []:
        tasks.append(_held(item, node, "reserved", declared))
    for item in scheduled if isinstance(scheduled, list) else []:
        if isinstance(item, Mapping):
            tasks.append(_held(item.get("request"), node, "scheduled", declared, eta=item.get("eta")))
    return tasks


def held_tasks(replies: Replies, node: str) -> list[HeldTask]:
    """Active, reserved and scheduled tasks of ``node`` from gathered replies (:data:`HELD_COMMANDS`;
    with an ``active_queues`` reply too, each task's queue is matched against it)."""
    return _held_tasks(node, replies, declared_queues(replies.get("active_queues", node)))


# --------------------------------------------------------------------------------------------
# a whole worker
def _count(value: Any) -> int | None:
    return len(value) if isinstance(value, list) else None


def parse_worker(node: str, replies: Replies) -> WorkerInfo:
    """One :class:`WorkerInfo` from the gathered replies of ``node`` (:data:`WORKER_COMMANDS`;
    commands not asked are ``None`` in it)."""
    stats = replies.get("stats", node)
    stats = stats if isinstance(stats, Mapping) else {}
    declared = declared_queues(replies.get("active_queues", node))
    pool = stats.get("pool")
    pool = pool if isinstance(pool, Mapping) else {}
    concurrency = pool.get("max-concurrency")
    prefetch = stats.get("prefetch_count")
    uptime = stats.get("uptime")
    return WorkerInfo(
        hostname=node,
        pid=worker_pid(stats),
        pool=_pool_name(pool.get("implementation")),
        concurrency=concurrency if isinstance(concurrency, int) else None,
        prefetch_count=prefetch if isinstance(prefetch, int) else None,
        queues=tuple(sorted(str(q.get("name")) for q in declared)),
        active=_count(replies.get("active", node)),
        reserved=_count(replies.get("reserved", node)),
        scheduled=_count(replies.get("scheduled", node)),
        uptime=float(uptime) if isinstance(uptime, (int, float)) else None,
        celery_version=celery_version(replies.get("report", node)),
        tasks=tuple(_held_tasks(node, replies, declared)),
        partial=node in replies.missing,
        build=worker_build(stats),
    )
