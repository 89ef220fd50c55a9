"""``deploykit builds``: which builds are still alive, and where.

One row per build: the workers that advertise it (:attr:`WorkerInfo.build`), the waiting messages
it produced (their ``deploykit_build`` header, :mod:`deploykit.celery`) by where they wait, the
latest ETA among them, whether the manifest registry knows it, and its state:

* **active**: workers of this build run;
* **draining**: no worker of this build runs, messages it produced still wait;
* **drained**: the registry knows it, nothing of it is left.

Messages without a stamp (or with a stamp that is not a valid build id) are one ``unstamped`` row;
tasks held by workers whose build cannot be read (RabbitMQ: a worker's ``reserved``/``scheduled``
reply carries no headers, celery/worker/request.py ``Request.info``) are one ``unknown`` row.

Counting reads every waiting message the way ``deploykit scan`` does (the broker's stored pages,
its unacked store, ``--peek`` on RabbitMQ) but decodes only the two headers it needs from each
envelope: no body, no per-message object (see README, Benchmarks). What cannot be read (RabbitMQ
without ``--peek``, beyond the peek limit, delayed-delivery queues not peeked, workers that did
not answer) is reported as unread, with the broker's count, and makes the result incomplete.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from deploykit.brokers.base import Broker, RawMessage, StoredPage, is_delayed_queue
from deploykit.brokers.envelope import parse_ready
from deploykit.celery import validate_build
from deploykit.errors import DeploykitError
from deploykit.inspection import FleetView
from deploykit.messages import parse_time
from deploykit.registry import RegistryEntry
from deploykit.scan.run import PeekOptions, queue_notes, read_queues, unchecked_counts

#: Row kinds: a build id, the messages/workers without a stamp, tasks whose build cannot be read.
BUILD, UNSTAMPED, UNKNOWN = "build", "unstamped", "unknown"
ACTIVE, DRAINING, DRAINED = "active", "draining", "drained"
_STATE_ORDER = {ACTIVE: 0, DRAINING: 1, DRAINED: 2, None: 3}


# --------------------------------------------------------------------------------------------
# the header-only envelope reader
class _Stamp(msgspec.Struct, gc=False):
    deploykit_build: Any = None
    eta: Any = None


class _HeadersOnly(msgspec.Struct, gc=False):
    """kombu's virtual-transport envelope (:mod:`deploykit.brokers.envelope`) reduced to the two
    headers a count needs: msgspec skips the body and every other field without building them."""

    headers: _Stamp | None = None


_decode_stamp = msgspec.json.Decoder(_HeadersOnly).decode


# --------------------------------------------------------------------------------------------
# data
@dataclass(frozen=True)
class BuildMessages:
    """A build's waiting messages by where they wait."""

    #: Ready in each queue (Redis lists, filesystem files, RabbitMQ queues peeked).
    queues: Mapping[str, int] = field(default_factory=dict)
    #: Delivered and not acknowledged, held by no worker that answered (Redis ``unacked``: its
    #: worker died or did not answer).
    unacked: int = 0
    #: Held by each worker: reserved, prefetched or ETA-scheduled (running, with ``acks_late``).
    held: Mapping[str, int] = field(default_factory=dict)
    #: In RabbitMQ's native delayed-delivery queues (``celery_delayed_*``), peeked.
    delayed: int = 0
    #: Entries of the beat schedule of the app given with ``-A``, when it is of this build.
    beat: int = 0

    @property
    def total(self) -> int:
        return sum(self.queues.values()) + self.unacked + sum(self.held.values()) + self.delayed + self.beat


@dataclass(frozen=True)
class BuildRow:
    """One live build (or the unstamped / unknown-build row)."""

    #: The build id; ``None`` for the ``unstamped`` and ``unknown`` rows.
    build: str | None
    kind: str
    #: ``active``, ``draining`` or ``drained``; ``None`` for the ``unknown`` row (not a build).
    state: str | None
    workers: tuple[str, ...]
    messages: BuildMessages
    latest_eta: datetime | None
    #: The registry has a readable manifest of it; ``None`` when the registry was not read
    #: (and for the unstamped and unknown rows).
    manifest: bool | None


@dataclass(frozen=True)
class Unread:
    """Waiting messages that were not read: their builds are unknown."""

    #: ``queue:<name>``, ``delayed:<names>`` or ``workers``.
    location: str
    #: As the broker counts them; ``None``: unknown.
    messages: int | None
    reason: str
    remedy: str


@dataclass(frozen=True)
class BuildsView:
    rows: tuple[BuildRow, ...]
    unread: tuple[Unread, ...]
    #: Messages whose headers were read (queues, unacked store, peeked).
    read: int
    #: Queues read (or peeked).
    queues: tuple[str, ...]
    #: Where the registry lives; ``None`` when it was not read.
    registry: str | None
    notes: tuple[str, ...] = ()

    @property
    def incomplete(self) -> bool:
        """Some waiting messages were not read: their builds are not counted."""
        return bool(self.unread)


# --------------------------------------------------------------------------------------------
# counting
class _Tally:
    """Running counts by row key: a build id, or ``None`` for unstamped messages."""

    def __init__(self) -> None:
        self.queues: dict[str | None, Counter[str]] = {}
        self.unacked: Counter[str | None] = Counter()
        self.held: dict[str | None, Counter[str]] = {}
        self.unknown_held: Counter[str] = Counter()
        self.delayed: Counter[str | None] = Counter()
        self.beat: Counter[str | None] = Counter()
        self.latest_eta: dict[str | None, datetime] = {}
        self.unknown_eta: datetime | None = None
        self.read = 0
        self.invalid = 0
        #: Header value -> the build it names (``None``: not a valid build id).
        self._builds: dict[str, str | None] = {}

    def build_of(self, value: Any) -> str | None:
        if value is None:
            return None
        if type(value) is not str:
            self.invalid += 1
            return None
        try:
            build = self._builds[value]
        except KeyError:
            try:
                build = validate_build(value)
            except ValueError:
                build = None
            self._builds[value] = build
        if build is None:
            self.invalid += 1
        return build

    def eta(self, key: str | None, value: Any) -> None:
        when = parse_time(value)
        if when is not None:
            latest = self.latest_eta.get(key)
            if latest is None or when > latest:
                self.latest_eta[key] = when

    def stamps(self, location: str, queue: str, stamps: Iterable[_Stamp | None]) -> None:
        """Count one page of messages of ``queue`` (``location``: ``queue`` or ``delayed``)."""
        counts: Counter[str | None] = Counter()
        build_of = self.build_of
        for stamp in stamps:
            if stamp is None:
                counts[None] += 1
                continue
            key = build_of(stamp.deploykit_build)
            counts[key] += 1
            if stamp.eta:
                self.eta(key, stamp.eta)
        self.read += sum(counts.values())
        for key, number in counts.items():
            if location == "delayed":
                self.delayed[key] += number
            else:
                self.queues.setdefault(key, Counter())[queue] += number


def _page_stamps(
    queue: str, items: list[bytes], parser: Callable[[str, list[bytes]], list[RawMessage]]
) -> Iterable[_Stamp | None]:
    """The stamps of one stored page: the header-only reader for kombu envelopes, the page's own
    parser for anything else (and for an envelope the fast path cannot read)."""
    if parser is not parse_ready:
        return [_stamp_of(m) for m in parser(queue, items)]
    stamps: list[_Stamp | None] = []
    for data in items:
        try:
            stamps.append(_decode_stamp(data).headers)
        except msgspec.DecodeError:
            (message,) = parse_ready(queue, [data])
            stamps.append(_stamp_of(message))
    return stamps


def _stamp_of(message: RawMessage) -> _Stamp:
    return _Stamp(message.headers.deploykit_build, message.headers.eta)


def _count_queues(
    broker: Broker,
    queues: Sequence[str],
    tally: _Tally,
    peek: PeekOptions | None,
) -> tuple[list[Unread], list[str], list[str]]:
    """Read every queue as the scan does (pages, or peeked): the unread ones, the queues read,
    and notes."""

    def count_pages(queue: str, pages: Iterator[StoredPage]) -> None:
        location = "delayed" if is_delayed_queue(queue) else "queue"
        for page in pages:
            tally.stamps(location, queue, _page_stamps(page.queue, page.items, page.parser))

    def count_peeked(queue: str, messages: Sequence[RawMessage]) -> None:
        location = "delayed" if is_delayed_queue(queue) else "queue"
        tally.stamps(location, queue, (_stamp_of(m) for m in messages))

    reads = read_queues(broker, queues, peek, count_pages, count_peeked)
    read = [*reads.readable, *reads.peeked]
    missing = [
        Unread(u.location, u.count, u.reason, u.remedy) for u in unchecked_counts(broker, reads, peek, queues)
    ]
    return missing, read, queue_notes(reads.readable, reads.peeked, reads.peek_effects, reads.nothing_waits)


def _count_held(broker: Broker, fleet: FleetView, tally: _Tally) -> list[Unread]:
    """Tasks workers hold: from the broker's unacked store where it has one (Redis: stamped, and
    matched by task id to the worker that reports holding it), else from the workers' replies,
    which carry no headers (the ``unknown`` row)."""
    holder = {task.id: task.worker for task in fleet.held_tasks if task.id}
    if broker.shows_unacked:
        for message in broker.unacked_messages():
            tally.read += 1
            key = tally.build_of(message.headers.deploykit_build)
            if message.headers.eta:
                tally.eta(key, message.headers.eta)
            worker = holder.get(message.headers.id) if isinstance(message.headers.id, str) else None
            if worker is None:
                tally.unacked[key] += 1
            else:
                tally.held.setdefault(key, Counter())[worker] += 1
        return []
    for task in fleet.held_tasks:
        if task.state in ("reserved", "scheduled"):
            tally.unknown_held[task.worker] += 1
            if task.eta is not None and (tally.unknown_eta is None or task.eta > tally.unknown_eta):
                tally.unknown_eta = task.eta
    silent = sorted({*fleet.partial, *fleet.discovery.silent})
    if silent:
        return [
            Unread(
                "workers",
                None,
                f"held by workers that did not answer ({', '.join(silent)})",
                "retry with a longer --timeout",
            )
        ]
    return []


def _beat(app: Any, build: str | None) -> tuple[int, str | None]:
    """The number of beat entries of the app given with ``-A`` (guarded: user settings)."""
    try:
        schedule = app.conf.beat_schedule
        count = len(schedule) if isinstance(schedule, Mapping) else 0
    except Exception as exc:  # a broken setting must not stop the count
        return 0, f"beat entries not counted: reading beat_schedule failed ({type(exc).__name__})"
    if not count:
        return 0, None
    named = f"build {build}" if build else "no build (unstamped)"
    return (
        count,
        f"{count} beat entr{'y' if count == 1 else 'ies'} of the app given with -A, counted as {named}",
    )


def _registry(
    entries: Callable[[], Sequence[RegistryEntry]] | None,
) -> tuple[dict[str, bool] | None, list[str]]:
    """Build -> its manifest is readable, from the registry's listing; ``None`` when not read."""
    if entries is None:
        return None, []
    try:
        listed = entries()
    except DeploykitError as problem:
        return None, [f"manifest registry not read: {problem.message}"]
    return {entry.build: entry.problem is None for entry in listed}, []


def collect_builds(
    broker: Broker,
    fleet: FleetView,
    *,
    queues: Sequence[str],
    registry: Callable[[], Sequence[RegistryEntry]] | None = None,
    registry_location: str | None = None,
    app: Any = None,
    app_build: str | None = None,
    peek: PeekOptions | None = None,
) -> BuildsView:
    """Count every waiting message of ``queues`` (and those workers hold) by the build that
    produced it, and put each build's workers and registry entry next to it.

    ``registry`` lists the registry's entries (``ManifestRegistry.entries``); ``None``: not read.
    ``app``: the app given with ``-A``, whose beat entries count as ``app_build`` (its installed
    build). ``peek``: how to sample queues that have no non-destructive read (RabbitMQ).
    """
    tally = _Tally()
    unread, read_queues, notes = _count_queues(broker, queues, tally, peek)
    unread += _count_held(broker, fleet, tally)
    if app is not None:
        beat, beat_note = _beat(app, app_build)
        if beat:
            tally.beat[app_build] += beat
        if beat_note:
            notes.append(beat_note)
    else:
        notes.append("beat entries not counted: give the app with -A to count its beat_schedule")
    if fleet.discovery.silent:
        notes.append(
            f"workers not answering (mailbox still on the broker): {', '.join(fleet.discovery.silent)}: "
            "their builds are unknown"
        )
    manifests, registry_notes = _registry(registry)
    notes += registry_notes
    if tally.invalid:
        notes.append(
            f"{tally.invalid} message(s) carry a deploykit_build header that is not a valid build id: "
            "counted as unstamped"
        )
    if tally.unknown_held:
        notes.append(
            f"{sum(tally.unknown_held.values())} task(s) held by workers counted as 'unknown build': "
            f"a worker's reply carries no message headers ({broker.kind})"
        )
    rows = _rows(fleet, tally, manifests)
    return BuildsView(
        rows=rows,
        unread=tuple(unread),
        read=tally.read,
        queues=tuple(read_queues),
        registry=registry_location if manifests is not None else None,
        notes=tuple(notes),
    )


def _state(workers: Sequence[str], messages: BuildMessages) -> str:
    if workers:
        return ACTIVE
    return DRAINING if messages.total else DRAINED


def _messages(tally: _Tally, key: str | None) -> BuildMessages:
    return BuildMessages(
        queues=dict(sorted(tally.queues.get(key, Counter()).items())),
        unacked=tally.unacked.get(key, 0),
        held=dict(sorted(tally.held.get(key, Counter()).items())),
        delayed=tally.delayed.get(key, 0),
        beat=tally.beat.get(key, 0),
    )


def _rows(fleet: FleetView, tally: _Tally, manifests: Mapping[str, bool] | None) -> tuple[BuildRow, ...]:
    workers: dict[str | None, list[str]] = {}
    unknown_workers: list[str] = []
    for worker in fleet.workers:
        if worker.build is None and worker.hostname in fleet.partial:
            unknown_workers.append(worker.hostname)  # its stats did not come back: build unknown
        else:
            workers.setdefault(worker.build, []).append(worker.hostname)
    keys: set[str | None] = {
        *workers,
        *tally.queues,
        *tally.unacked,
        *tally.held,
        *tally.delayed,
        *tally.beat,
    }
    builds = {key for key in keys if key is not None}
    builds.update(manifests or ())
    rows = []
    for build in builds:
        names = tuple(sorted(workers.get(build, ())))
        messages = _messages(tally, build)
        rows.append(
            BuildRow(
                build,
                BUILD,
                _state(names, messages),
                names,
                messages,
                tally.latest_eta.get(build),
                None if manifests is None else manifests.get(build, False),
            )
        )
    rows.sort(key=lambda row: (_STATE_ORDER[row.state], row.build or ""))
    if None in keys:
        names = tuple(sorted(workers.get(None, ())))
        messages = _messages(tally, None)
        rows.append(
            BuildRow(
                None, UNSTAMPED, _state(names, messages), names, messages, tally.latest_eta.get(None), None
            )
        )
    if tally.unknown_held or unknown_workers:
        messages = BuildMessages(held=dict(sorted(tally.unknown_held.items())))
        rows.append(
            BuildRow(None, UNKNOWN, None, tuple(sorted(unknown_workers)), messages, tally.unknown_eta, None)
        )
    return tuple(rows)
