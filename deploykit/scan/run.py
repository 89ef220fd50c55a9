"""``deploykit scan``: every waiting message judged against the new code, in one streaming pass.

Sources, all read without consuming or reordering anything: the broker's queues (Redis lists with
their priority sub-lists, filesystem queue files) and its unacked store (Redis ``unacked``: tasks
workers hold, ETA ones included), the workers' reserved and scheduled tasks through remote control
(RabbitMQ keeps those invisible otherwise), the beat schedule, and — only when asked with
``peek`` — RabbitMQ queues through the management API, whose ``get`` requeues.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from queue import Full, Queue
from typing import Any

from deploykit.brokers.base import Broker, StoredPage
from deploykit.errors import Refused
from deploykit.fleet.base import Fleet
from deploykit.manifest.model import BeatEntry, Manifest
from deploykit.messages import NO_HEADERS
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
        yield Item(location, NO_HEADERS, None, DecodedMessage(None, entry.task, (call,), None))


def _ticker(report: Report, progress: Progress | None, every: int = 50_000) -> Callable[[], None]:
    """A callback for after each page: calls ``progress(scanned, elapsed)`` every ``every`` messages."""
    started = time.monotonic()
    due = every

    def tick() -> None:
        nonlocal due
        if progress is not None and report.scanned >= due:
            progress(report.scanned, time.monotonic() - started)
            due = (report.scanned // every + 1) * every

    return tick


def read_ahead(pages: Iterator[StoredPage], depth: int = 2) -> Iterator[StoredPage]:
    """``pages``, read by a background thread up to ``depth`` pages ahead of the caller.

    The broker prepares the next page (the server's work and the network round trip, during which
    the thread releases the GIL) while the caller judges this one. Errors raised while reading are
    raised here, in the caller's thread.
    """
    buffer: Queue[tuple[StoredPage | None, BaseException | None]] = Queue(depth)
    stop = threading.Event()

    def put(item: tuple[StoredPage | None, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
            except Full:
                continue
            return True
        return False

    def produce() -> None:
        try:
            for page in pages:
                if not put((page, None)):
                    return
        except BaseException as exc:  # handed over to the caller's thread
            put((None, exc))
            return
        put((None, None))

    reader = threading.Thread(target=produce, name="deploykit-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            page, error = buffer.get()
            if error is not None:
                raise error
            if page is None:
                return
            yield page
    finally:
        stop.set()
        reader.join(timeout=5)


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

    tick = _ticker(report, progress)
    readable: list[str] = []
    for queue in queues:
        try:
            pages = iter(broker.iter_pages(queue))
            first = next(pages, None)
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
            for page in itertools.chain((first,), read_ahead(pages)):
                judge_raw(page.read(), f"queue:{queue}", judge, report)
                tick()
    for raw in broker.unacked_messages():
        task_id = raw.headers.id
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
