"""``deploykit scan``: every waiting message judged against the new code, in one streaming pass.

Sources, all read without consuming or reordering anything: the broker's queues (Redis lists with
their priority sub-lists, filesystem queue files) and its unacked store (Redis ``unacked``: tasks
workers hold, ETA ones included), the workers' reserved and scheduled tasks through remote control
(RabbitMQ keeps those invisible otherwise), the beat schedule, and — only when asked with
``peek`` — RabbitMQ queues through the management API, whose ``get`` requeues.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from deploykit.brokers.base import Broker
from deploykit.errors import Refused
from deploykit.fleet.base import Fleet
from deploykit.manifest.model import BeatEntry, Manifest
from deploykit.scan.bind import Param, TaskSpec
from deploykit.scan.decode import DecodedMessage, TaskCall, _shape_from_repr
from deploykit.scan.engine import Item, Judge, Report, judge_raw, scan
from deploykit.scan.sources import beat_items, django_beat_items, worker_items

Progress = Callable[[int, float], None]


def task_specs(manifest: Manifest) -> dict[str, TaskSpec]:
    """The scan's view of a manifest: each task's parameters, function name and binding."""
    specs = {}
    for name, task in manifest.tasks.items():
        qualname = task.qualname or name.rsplit(".", 1)[-1]
        specs[name] = TaskSpec(
            name=name,
            function=qualname.rsplit(".", 1)[-1],
            params=tuple(Param(p.name, p.kind, p.has_default) for p in task.parameters),
            bound=task.bound,
            qualname=qualname,
        )
    return specs


@dataclass(frozen=True)
class PeekOptions:
    """RabbitMQ peeking: explicit, bounded, and refused on quorum queues unless forced."""

    limit: int
    allow_quorum: bool = False


def manifest_beat_items(entries: Iterable[BeatEntry]) -> Iterator[Item]:
    """Beat entries recorded in a manifest (argument values as reprs: only their shape counts)."""
    for entry in entries:
        location = f"beat:{entry.name}"
        try:
            args = _shape_from_repr("(" + "".join(a + ", " for a in entry.args) + ")", "args")
        except ValueError:
            args = tuple(entry.args)
        call = TaskCall(entry.task, tuple(args), dict(entry.kwargs))
        yield Item(location, {}, None, DecodedMessage(None, entry.task, (call,), None))


def _progress(
    items: Iterator[Any], report: Report, progress: Progress | None, every: int = 50_000
) -> Iterator[Any]:
    """Pass items through, calling ``progress(scanned, elapsed)`` every ``every`` messages."""
    if progress is None:
        yield from items
        return
    started = time.monotonic()
    for index, item in enumerate(items, start=1):
        if index % every == 0:
            progress(report.scanned, time.monotonic() - started)
        yield item


def run_scan(
    *,
    broker: Broker,
    new: Manifest,
    old: Manifest | None,
    now: datetime,
    queues: Iterable[str],
    fleet: Fleet | None = None,
    workers: Iterable[str] = (),
    app: Any = None,
    include_beat: bool = True,
    peek: PeekOptions | None = None,
    oversize: int = 1024 * 1024,
    progress: Progress | None = None,
) -> Report:
    """Judge every waiting message; the report says what was read and what could not be."""
    report = Report(now, oversize)
    judge = Judge(task_specs(new), task_specs(old) if old is not None else None)
    seen_ids: set[str] = set()

    readable: list[str] = []
    for queue in queues:
        try:
            messages = iter(broker.iter_messages(queue))
            first = next(messages, None)
        except Refused:
            if peek is None:
                report.notes.append(
                    f"queue {queue} not read: {broker.kind} has no non-destructive read; "
                    "pass --peek to sample it (RabbitMQ requeues peeked messages and marks them redelivered)"
                )
                continue
            try:
                peeked, note = broker.peek_messages(queue, peek.limit, allow_quorum=peek.allow_quorum)
            except Refused as refused:
                report.notes.append(refused.message)
                continue
            report.notes.append(note)
            judge_raw(peeked, f"queue:{queue}", judge, report)
            continue
        readable.append(queue)
        if first is not None:
            judge_raw(
                _progress(itertools.chain((first,), messages), report, progress),
                f"queue:{queue}",
                judge,
                report,
            )
    for raw in broker.unacked_messages():
        task_id = raw.headers.get("id")
        if isinstance(task_id, str):
            seen_ids.add(task_id)
        judge_raw((raw,), f"unacked:{raw.queue or '?'}", judge, report)

    nodes = list(workers)
    if fleet is not None and nodes:
        replies = fleet.gather({"reserved": {}, "scheduled": {}}, nodes)
        scan(worker_items(replies.by_command, seen_ids), judge, report)
        if replies.missing:
            report.notes.append(
                "workers that did not answer (their held tasks are not checked): "
                + ", ".join(replies.missing)
            )
    if include_beat:
        if app is not None:
            scan(beat_items(app), judge, report)
            django_items, django_note = django_beat_items()
            scan(django_items, judge, report)
            if django_note:
                report.notes.append(django_note)
        else:
            scan(manifest_beat_items(new.beat), judge, report)
    report.notes.insert(0, f"queues read: {', '.join(readable) if readable else 'none'}")
    return report
