"""Fakes behind the project's own interfaces (Broker, Fleet), for unit tests of the core."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from deploykit.brokers.base import (
    Broker,
    BrokerSettings,
    DelayedStore,
    QueueReport,
    QueueStats,
    RawMessage,
    ReadRefusal,
    ReadRefused,
    StoredPage,
)
from deploykit.brokers.envelope import parse_ready
from deploykit.fleet.base import Fleet, Replies


class FakeBroker(Broker):
    kind = "redis"

    def __init__(
        self,
        stats: Sequence[QueueStats] = (),
        *,
        kind: str = "redis",
        known: Sequence[str] = (),
        mailboxes: Sequence[str] | None = None,
        unacked: Sequence[RawMessage] = (),
        settings: BrokerSettings | None = None,
        delayed: DelayedStore | None = None,
        notes: Sequence[str] = (),
        source: str = "fake",
        shows_unacked: bool | None = None,
        ready: Mapping[str, Sequence[bytes]] | None = None,
        peekable: Mapping[str, Sequence[RawMessage]] | None = None,
    ) -> None:
        super().__init__("fake://")
        self.kind = kind  # type: ignore[misc]
        # Like the real brokers: Redis shows what workers hold, the others do not.
        self.shows_unacked = kind == "redis" if shows_unacked is None else shows_unacked  # type: ignore[misc]
        self.stats = {s.name: s for s in stats}
        self.known = list(known)
        self.mailboxes = None if mailboxes is None else list(mailboxes)
        self.unacked = list(unacked)
        self._settings = settings or BrokerSettings()
        self.delayed = delayed
        self.notes = tuple(notes)
        self.source = source
        self.asked: list[list[str]] = []
        #: Stored envelopes per queue, read in pages like Redis lists (``None``: no read in place).
        self.ready = None if ready is None else {q: list(items) for q, items in ready.items()}
        #: Messages ``peek_messages`` returns per queue (``None``: peeking refused).
        self.peekable = None if peekable is None else {q: list(m) for q, m in peekable.items()}

    def known_queues(self) -> list[str]:
        return list(self.known)

    def queue_stats(self, names: Sequence[str]) -> QueueReport:
        self.asked.append(list(names))
        rows = tuple(self.stats.get(n, QueueStats(name=n, exists=False)) for n in names)
        return QueueReport(rows, source=self.source, notes=self.notes, delayed=self.delayed)

    def unacked_messages(self) -> Iterator[RawMessage]:
        return iter(self.unacked)

    def iter_pages(self, queue: str, *, batch: int = 1000) -> Iterator[StoredPage]:
        if self.ready is None:
            return super().iter_pages(queue, batch=batch)
        items = self.ready.get(queue, [])
        return iter(
            [StoredPage(queue, items[i : i + batch], parse_ready) for i in range(0, len(items), batch)]
        )

    def peek_messages(
        self, queue: str, limit: int, *, allow_quorum: bool = False
    ) -> tuple[list[RawMessage], str]:
        if self.peekable is None:
            return super().peek_messages(queue, limit, allow_quorum=allow_quorum)
        if queue not in self.peekable:
            raise ReadRefused(f"no queue {queue}", ReadRefusal.UNKNOWN_QUEUE, queue)
        return self.peekable[queue][:limit], "requeued (fake)"

    def worker_mailboxes(self, control_exchange: str = "celery") -> list[str] | None:
        return self.mailboxes

    def settings(self) -> BrokerSettings:
        return self._settings


class FakeFleet(Fleet):
    """Workers that answer from a table: ``replies[node][command] = reply``."""

    def __init__(self, replies: Mapping[str, Mapping[str, Any]], silent: Sequence[str] = ()) -> None:
        self.replies = {node: dict(cmds) for node, cmds in replies.items()}
        self.silent = set(silent)
        self.calls: list[tuple[str, Any]] = []

    def ping(self, destination: Sequence[str] | None = None) -> list[str]:
        self.calls.append(("ping", None if destination is None else list(destination)))
        nodes = self.replies if destination is None else [n for n in destination if n in self.replies]
        return sorted(n for n in nodes if n not in self.silent)

    def gather(self, commands: Mapping[str, Mapping[str, Any]], destination: Sequence[str]) -> Replies:
        self.calls.append(("gather", (sorted(commands), list(destination))))
        by_command: dict[str, dict[str, Any]] = {c: {} for c in commands}
        missing = []
        for node in destination:
            answers = self.replies.get(node, {})
            for command in commands:
                if node in self.silent or command not in answers:
                    missing.append(node)
                    continue
                by_command[command][node] = answers[command]
        return Replies(by_command, missing=tuple(sorted(set(missing))))

    def control(
        self, command: str, arguments: Mapping[str, Any], destination: Sequence[str], *, reply: bool = True
    ) -> Mapping[str, Any]:
        self.calls.append((command, (dict(arguments), list(destination))))
        return {n: {"ok": command} for n in destination if n in self.replies and n not in self.silent}
