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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from queue import Full, Queue
from typing import TYPE_CHECKING, Any

from deploykit.brokers.base import Broker, RawMessage, ReadRefusal, ReadRefused, StoredPage
from deploykit.errors import UsageError
from deploykit.fleet.base import Fleet
from deploykit.inspection import app_queue_names, discover
from deploykit.manifest.builtins import builtin_tasks
from deploykit.manifest.diff import parameter_renames
from deploykit.manifest.model import BeatEntry, Manifest, Task
from deploykit.messages import NO_HEADERS
from deploykit.output.humanize import listed
from deploykit.scan.bind import Param, TaskSpec
from deploykit.scan.decode import DecodedMessage, TaskCall, _shape_from_repr
from deploykit.scan.engine import (
    BuildStatus,
    Item,
    Judge,
    OldBuilds,
    Report,
    Unchecked,
    judge_raw,
    scan,
)
from deploykit.scan.sources import beat_items, django_beat_items, worker_items

if TYPE_CHECKING:
    from deploykit.registry import ManifestRegistry

Progress = Callable[[int, float], None]


def task_specs(manifest: Manifest | Mapping[str, Task]) -> dict[str, TaskSpec]:
    """The scan's view of a manifest (or of tasks by name): parameters, function name, binding."""
    tasks = manifest.tasks if isinstance(manifest, Manifest) else manifest
    specs = {}
    for name, task in tasks.items():
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


def build_judge(new: Manifest, old: Manifest | None, *, builds: OldBuilds | None = None) -> Judge:
    """A judge for ``new`` code (plus Celery's built-in tasks, which every worker registers),
    with ``old`` for misbinding: parameters renamed in place (``PARAM_RENAMED``) bind as before;
    with ``builds``, stamped messages of a build in the registry are judged against its manifest."""
    renames = {}
    if old is not None:
        for name, before in old.tasks.items():
            after = new.tasks.get(name)
            pairs = parameter_renames(before, after) if after is not None else {}
            if pairs:
                renames[name] = pairs
    specs = {**task_specs(builtin_tasks()), **task_specs(new)}
    return Judge(specs, task_specs(old) if old is not None else None, renames, builds=builds)


def registry_builds(
    registry: ManifestRegistry | None, new: Manifest, *, problem: str | None = None
) -> OldBuilds:
    """The old side of stamped messages: each build's manifest from ``registry``, read when the
    build's first message is met (once per scan); without a registry (``problem`` says why),
    every stamped message counts as of an unknown build."""
    if registry is None:
        return OldBuilds(None, problem=problem)
    from deploykit.registry import validate_build

    def load(build: str) -> Judge | None:
        try:
            validate_build(build)
        except UsageError:  # no registry entry can have this name: an unknown build
            return None
        manifest = registry.get(build)  # UsageError: corrupt, or from a newer deploykit
        return build_judge(new, manifest) if manifest is not None else None

    return OldBuilds(load, registry=registry.location)


_PEEK = "pass --peek to sample it through the management API (requeues, marks redelivered)"
#: Queues not peeked for a reason that hides no message, and how the note says it.
_NOTHING_WAITS = {
    ReadRefusal.UNKNOWN_QUEUE: "the broker does not know them",
    ReadRefusal.NOT_A_TASK_QUEUE: "streams, not task queues",
}


def _queues(names: Sequence[str]) -> str:
    return f"queue {names[0]}" if len(names) == 1 else f"{len(names)} queues ({listed(names)})"


@dataclass
class QueueReads:
    """What reading a set of queues did: which were read in place or peeked, and which not (why)."""

    #: Queues read in place (their pages went to ``on_pages``).
    readable: list[str]
    #: Queues sampled with ``peek``: how many messages each gave.
    peeked: dict[str, int]
    #: What each peek did to the messages -> the queues it did it to.
    peek_effects: dict[str, list[str]]
    #: Queues not read at all: queue -> (why, how to check).
    unread: dict[str, tuple[str, str]]
    #: Queues not peeked where nothing waits for a worker (unknown to the broker, streams).
    nothing_waits: dict[ReadRefusal, list[str]]


def read_queues(
    broker: Broker,
    queues: Iterable[str],
    peek: PeekOptions | None,
    on_pages: Callable[[str, Iterator[StoredPage]], None],
    on_peeked: Callable[[str, Sequence[RawMessage]], None],
) -> QueueReads:
    """Read every queue once, in place where the broker can, else by ``peek`` when asked; the one
    place that decides what cannot be read and how a user would check it (scan and builds)."""
    reads = QueueReads([], {}, {}, {}, {})
    for queue in dict.fromkeys(queues):
        try:
            pages = iter(broker.iter_pages(queue))
            first = next(pages, None)
        except ReadRefused:
            if peek is None:
                reads.unread[queue] = (f"{broker.kind} has no non-destructive read", _PEEK)
                continue
            try:
                peeked, effect = broker.peek_messages(queue, peek.limit, allow_quorum=peek.allow_quorum)
            except ReadRefused as refused:
                if refused.reason in _NOTHING_WAITS:
                    reads.nothing_waits.setdefault(refused.reason, []).append(queue)
                elif refused.reason is ReadRefusal.QUORUM_QUEUE:
                    reads.unread[queue] = (
                        "a quorum queue, not peeked",
                        "add --force to --peek (moves them to the back, raises their delivery count)",
                    )
                else:
                    reads.unread[queue] = (refused.message, "read them with the broker's own tools")
                continue
            reads.peek_effects.setdefault(effect, []).append(queue)
            reads.peeked[queue] = len(peeked)
            on_peeked(queue, peeked)
            continue
        reads.readable.append(queue)
        if first is not None:
            on_pages(queue, itertools.chain((first,), pages))
    return reads


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
    beat_schedule: bool = True,
    peek: PeekOptions | None = None,
    oversize: int = 1024 * 1024,
    progress: Progress | None = None,
    old_builds: OldBuilds | None = None,
) -> Report:
    """Judge every waiting message; the report says what was read and what could not be.

    Every waiting message the broker reports is accounted for: those not read (a broker without a
    non-destructive read and no ``peek``, beyond the peek limit, a quorum queue not forced,
    native delayed-delivery queues, tasks held by workers that did not answer) are recorded in
    ``report.unchecked`` with their number, why, and how to check them.

    ``beat_schedule=False`` leaves out the app's (or the manifest's) ``beat_schedule`` entries,
    for a caller that judges them itself (``check --broker``: the manifest's ``BEAT_*`` rules),
    so a failing entry is reported once; django-celery-beat rows not in it are still scanned.
    """
    report = Report(now, oversize)
    judge = build_judge(new, old, builds=old_builds)
    seen_ids: set[str] = set()

    tick = _ticker(report, progress)

    def judge_pages(queue: str, pages: Iterator[StoredPage]) -> None:
        for page in read_ahead(pages):
            judge_raw(page.read(), f"queue:{queue}", judge, report)
            tick()

    queue_names = list(dict.fromkeys(queues))
    reads = read_queues(
        broker,
        queue_names,
        peek,
        judge_pages,
        lambda queue, peeked: judge_raw(peeked, f"queue:{queue}", judge, report),
    )
    for raw in broker.unacked_messages():
        task_id = raw.headers.id
        if isinstance(task_id, str):
            seen_ids.add(task_id)
        judge_raw((raw,), f"unacked:{raw.queue or '?'}", judge, report)
    report.unchecked.extend(unchecked_counts(broker, reads, peek, queue_names))

    nodes = list(workers)
    if fleet is not None and nodes:
        replies = fleet.gather({"reserved": {}, "scheduled": {}}, nodes)
        scan(worker_items(replies.by_command, seen_ids), judge, report)
        if replies.missing:
            missing = ", ".join(replies.missing)
            if broker.shows_unacked:
                # The broker's own unacked store was read (Redis): their held tasks are counted.
                report.notes.append(
                    f"workers that did not answer: {missing} (the tasks they hold were read from the broker)"
                )
            else:
                report.unchecked.append(
                    Unchecked(
                        "workers",
                        None,
                        f"held by workers that did not answer ({missing})",
                        "retry with a longer --timeout",
                    )
                )
    if include_beat:
        if app is not None:
            scan_app_beat(app, judge, report, schedule=beat_schedule)
        elif beat_schedule:
            scan(manifest_beat_items(new.beat), judge, report)
    report.notes[:0] = queue_notes(reads.readable, reads.peeked, reads.peek_effects, reads.nothing_waits)
    return report


def queues_to_scan(
    broker: Broker, new: Manifest, app: Any = None, *, given: Sequence[str] = (), peek: bool = False
) -> list[str]:
    """The queues a scan reads: ``given`` if any, else every queue the broker knows, the new
    code's tasks route to or the app defines, sorted; with ``peek``, then RabbitMQ's native
    delayed-delivery queues when they hold messages (``celery_delayed_*``, Celery 5.5+:
    celery/app/base.py ``send_task``, celery/worker/consumer/delayed_delivery.py)."""
    if given:
        return list(given)
    known = set(broker.known_queues())
    known.update(t.queue for t in new.tasks.values() if t.queue)
    known.update(app_queue_names(app))
    names = sorted(known)
    if peek:
        delayed = broker.queue_stats([]).delayed
        if delayed is not None and delayed.messages:
            names += sorted(delayed.queues)
    return names


def scan_waiting(
    broker: Broker,
    *,
    new: Manifest,
    old: Manifest | None,
    app: Any = None,
    queues: Sequence[str] = (),
    fleet: Fleet | None = None,
    control_exchange: str = "celery",
    include_beat: bool = True,
    beat_schedule: bool = True,
    peek: PeekOptions | None = None,
    oversize: int = 1024 * 1024,
    progress: Progress | None = None,
    old_builds: OldBuilds | None = None,
) -> Report:
    """``deploykit scan`` and ``check --broker``: :func:`run_scan` over :func:`queues_to_scan`
    and, with a ``fleet``, the workers online; with ``old_builds`` (:func:`registry_builds`),
    stamped messages judged against their build's manifest, and a line counting them per build;
    without ``old``, a note that misbinding (reordered parameters) cannot be detected in the
    messages not judged against their build's manifest."""
    names = queues_to_scan(broker, new, app, given=queues, peek=peek is not None)
    nodes: list[str] = []
    if fleet is not None:
        nodes = list(discover(fleet, broker, control_exchange).nodes)
    report = run_scan(
        broker=broker,
        new=new,
        old=old,
        now=datetime.now(timezone.utc),
        queues=names,
        fleet=fleet,
        workers=nodes,
        app=app,
        include_beat=include_beat,
        beat_schedule=beat_schedule,
        peek=peek,
        oversize=oversize,
        progress=progress,
        old_builds=old_builds,
    )
    builds = report.old_builds
    summary = builds.summary("the old manifest (--manifest)" if old is not None else None) if builds else None
    if summary:
        report.notes.append(summary)
    if old is None:
        judged = 0
        if builds is not None:
            judged = builds.messages(BuildStatus.MANIFEST) + builds.messages(BuildStatus.UNREADABLE)
        note = "no old manifest given (--manifest): reordered parameters cannot be detected"
        if not judged:
            report.notes.append(note)
        elif report.scanned > judged:
            rest = report.scanned - judged
            report.notes.append(f"{note} in the {rest} message(s) without their build's manifest")
    return report


def queue_notes(
    readable: Sequence[str],
    peeked: Mapping[str, int],
    effects: Mapping[str, Sequence[str]],
    nothing_waits: Mapping[ReadRefusal, Sequence[str]],
) -> list[str]:
    """What was read and peeked, one line per fact, long lists of queues shortened."""
    notes = []
    if readable or not peeked:
        notes.append(f"queues read: {listed(readable) if readable else 'none'}")
    for effect, names in effects.items():
        count = sum(peeked[name] for name in names)
        notes.append(f"peeked {count} message(s) of {_queues(names)}: {effect}")
    for reason, names in nothing_waits.items():
        notes.append(f"{_queues(names)} not peeked: {_NOTHING_WAITS[reason]}")
    return notes


def unchecked_counts(
    broker: Broker, reads: QueueReads, peek: PeekOptions | None, scanned: Iterable[str]
) -> list[Unchecked]:
    """What was not read, with the number the broker reports for each queue (none when all was)."""
    if not reads.unread and not reads.peeked:
        return []
    unchecked: list[Unchecked] = []
    stats = broker.queue_stats([*reads.unread, *reads.peeked])
    # Streams are logs, not task queues: nothing in them waits for a worker.
    waiting = {
        row.name: (row.ready if row.exists and row.queue_type != "stream" else 0) for row in stats.queues
    }
    for queue, (reason, remedy) in reads.unread.items():
        if waiting.get(queue) != 0:  # an empty (or absent) queue hides nothing
            unchecked.append(Unchecked(f"queue:{queue}", waiting.get(queue), reason, remedy))
    for queue, read in reads.peeked.items():
        ready = waiting.get(queue)
        left = None if ready is None else max(0, ready - read)
        if left != 0 and peek is not None:
            unchecked.append(
                Unchecked(
                    f"queue:{queue}",
                    left,
                    f"beyond --peek-limit {peek.limit}",
                    f"raise --peek-limit to at least {ready}" if ready is not None else "raise --peek-limit",
                )
            )
    delayed = stats.delayed
    if delayed is not None and delayed.messages != 0 and not set(delayed.queues) & set(scanned):
        unchecked.append(
            Unchecked(
                "delayed:" + ",".join(delayed.queues[:1]) + ("…" if len(delayed.queues) > 1 else ""),
                delayed.messages,
                "ETA tasks in RabbitMQ's native delayed-delivery queues, not read",
                _PEEK.replace("sample it", "sample them"),
            )
        )
    return unchecked


def _beat_key(item: Item) -> tuple[str, str | None, Any]:
    """An entry's name, task and call shape: the same entry from two sources counts once."""
    decoded = item.decoded
    name = item.location.split(":", 1)[1]
    if isinstance(decoded, DecodedMessage) and len(decoded.calls) == 1:
        call = decoded.calls[0]
        return name, decoded.task_name, (len(call.args), tuple(sorted(call.kwargs)))
    return name, decoded.task_name, None


def scan_app_beat(
    app: Any,
    judge: Judge,
    report: Report,
    django_rows: Callable[[], tuple[list[Item], str | None]] = django_beat_items,
    *,
    schedule: bool = True,
) -> None:
    """The app's ``beat_schedule`` and django-celery-beat's rows (``django_rows``), each entry once.

    django-celery-beat copies ``beat_schedule`` into its table when beat starts, so the same
    entry is usually in both; it is counted once (a row whose arguments differ is another call).
    ``schedule=False``: the ``beat_schedule`` entries are judged elsewhere; only the rows that
    are not copies of them are scanned.
    """
    entries = list(beat_items(app))
    if schedule:
        scan(entries, judge, report)
    django_items, django_note = django_rows()
    known = {_beat_key(item) for item in entries}
    rows = [item for item in django_items if _beat_key(item) not in known]
    scan(rows, judge, report)
    if django_note:
        if django_items:
            same = len(django_items) - len(rows)
            django_note = f"{len(django_items)} django-celery-beat periodic task(s) checked"
            if same and schedule:
                django_note += f" ({same} of them also in beat_schedule, counted once)"
            elif same:
                django_note = (
                    f"{len(rows)} django-celery-beat periodic task(s) checked ({same} more are "
                    "beat_schedule entries, judged with it)"
                )
        report.notes.append(django_note)
