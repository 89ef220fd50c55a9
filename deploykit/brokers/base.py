"""The one interface the core uses to talk to a broker, and the plain data that crosses it.

Each broker module (``redis.py``, ``rabbitmq.py``, ``filesystem.py``, ``generic.py``) implements
:class:`Broker` and translates its library's exceptions into :mod:`deploykit.errors` at this
boundary. Only plain data crosses it: frozen dataclasses, and frozen msgspec structs for what a
scan creates by the million. "Unknown" is ``None``, never ``0``.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType
from typing import Any, ClassVar, NamedTuple

import msgspec

from deploykit.errors import Refused
from deploykit.messages import StoredHeaders

#: Celery's remote-control, reply and event queues, kombu's own, and deploykit's manifest registry
#: (:mod:`deploykit.brokers.manifest_store`): never task queues.
_INTERNAL = re.compile(r"(\.pidbox$|^celeryev\.|\.reply\.celery\.pidbox$|^_kombu\.|^deploykit\.manifest\.)")
#: RabbitMQ native delayed delivery (Celery 5.5+ with quorum queues): celery_delayed_0 … _27.
DELAYED_QUEUE = re.compile(r"^(?:.+_)?celery_delayed_(\d+)$")


def is_internal_queue(name: str) -> bool:
    """True for Celery's remote-control, reply and event queues and deploykit's manifest registry
    queues (never task queues)."""
    return bool(_INTERNAL.search(name))


def is_delayed_queue(name: str) -> bool:
    """True for the ``celery_delayed_N`` queues of RabbitMQ native delayed delivery."""
    return bool(DELAYED_QUEUE.match(name))


class ReadRefusal(str, Enum):
    """Why a broker did not read a queue's waiting messages (:class:`ReadRefused`)."""

    #: The broker has no read that leaves messages in place (RabbitMQ without ``--peek``).
    NO_NON_DESTRUCTIVE_READ = "no-non-destructive-read"
    #: The broker cannot sample messages at all.
    NO_PEEK = "no-peek"
    #: A quorum queue: peeking moves its messages to the back and raises their delivery count,
    #: so it is refused unless allowed (``--force``).
    QUORUM_QUEUE = "quorum-queue"
    #: The broker does not know the queue: nothing waits in it.
    UNKNOWN_QUEUE = "unknown-queue"
    #: Not a task queue (a RabbitMQ stream): nothing in it waits for a worker.
    NOT_A_TASK_QUEUE = "not-a-task-queue"


class ReadRefused(Refused):
    """A broker refused to read (or peek) a queue, with the reason as data for the caller."""

    def __init__(self, message: str, reason: ReadRefusal, queue: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.queue = queue


@dataclass(frozen=True)
class QueueStats:
    """What the broker says about one queue."""

    name: str
    #: Messages waiting to be delivered (all priority sub-queues summed).
    ready: int | None = None
    #: Delivered to a consumer and not yet acknowledged (reserved, prefetched, ETA, running acks_late).
    unacked: int | None = None
    #: Of ``unacked``, how many carry an ETA/countdown (held in a worker's timer). ``None``: the
    #: broker cannot tell (RabbitMQ); the core then counts them from the workers' replies.
    unacked_eta: int | None = None
    #: Consumers attached, as the broker counts them (``None`` on Redis: it has no such notion).
    consumers: int | None = None
    #: ``classic`` / ``quorum`` / ``stream`` on RabbitMQ; ``None`` where the broker has no types.
    queue_type: str | None = None
    #: ``False`` when the broker does not know the queue (on Redis an empty queue has no key:
    #: that is still ``exists=True`` with ``ready=0`` if the queue is bound).
    exists: bool = True
    #: Ready messages per priority step (Redis), for display.
    ready_by_priority: Mapping[int, int] | None = None
    #: Queue arguments the broker reports (``x-consumer-timeout``, ``x-queue-type``…).
    arguments: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DelayedStore:
    """Broker-side storage of ETA messages (RabbitMQ native delayed delivery)."""

    queues: tuple[str, ...]
    #: Messages waiting in those queues (``None`` when only AMQP counts ready ones... see ``note``).
    messages: int | None
    note: str | None = None


@dataclass(frozen=True)
class QueueReport:
    """The answer to :meth:`Broker.queue_stats`."""

    queues: tuple[QueueStats, ...]
    #: Where the numbers came from: ``redis``, ``management-api``, ``amqp-passive``,
    #: ``filesystem`` or ``kombu``.
    source: str
    #: Human-readable caveats that belong next to the numbers (e.g. a fallback was used).
    notes: tuple[str, ...] = ()
    delayed: DelayedStore | None = None


class RawMessage(msgspec.Struct, frozen=True, gc=False):
    """A task message as the broker stores it: nothing decoded but the transport envelope.

    A msgspec struct rather than a dataclass or a named tuple: a queue scan creates millions of
    these, and a struct is built several times faster than either (see README, Benchmarks).
    """

    #: ``ready`` (waiting in a queue), ``unacked`` (delivered to a worker) or ``delayed``.
    location: str
    queue: str | None
    headers: StoredHeaders
    #: The payload: the serialized task call, still compressed if the ``compression`` header says
    #: so; base64 text when ``body_encoding`` is ``base64`` (an envelope whose body could not be
    #: decoded is kept as stored, for the scan to say why).
    body: bytes | str
    body_encoding: str | None
    content_type: str | None
    content_encoding: str | None
    #: Size of the stored message in bytes.
    size: int
    delivery_tag: str | None = None
    #: Unix time the message was delivered to a worker (Redis ``unacked_index``), for ``unacked``.
    delivered_at: float | None = None


class StoredPage(NamedTuple):
    """Up to a batch of waiting messages of one queue exactly as stored, next-to-run first."""

    queue: str
    items: list[bytes]
    #: Reads the items into messages: a module-level function (``parser(queue, items)``), so a
    #: page can be pickled to another process and read there.
    parser: Callable[[str, list[bytes]], list[RawMessage]]

    def read(self) -> list[RawMessage]:
        return self.parser(self.queue, self.items)


@dataclass(frozen=True)
class BrokerSettings:
    """Broker settings that decide deploy hazards."""

    #: Redis/SQS: seconds after which an unacked message is redelivered.
    visibility_timeout: float | None = None
    #: RabbitMQ: seconds a delivery may stay unacked before the channel is closed.
    consumer_timeout: float | None = None
    #: Where ``consumer_timeout`` comes from: ``default``, ``config``, ``queue-argument``, ``policy``.
    consumer_timeout_source: str | None = None


class Broker(ABC):
    """Read-only access to one broker (and, later, the few writes orchestration needs)."""

    #: ``redis``, ``rabbitmq``, ``filesystem`` or ``kombu``.
    kind: ClassVar[str]
    #: True when :meth:`unacked_messages` yields every message workers hold (reserved, prefetched,
    #: ETA): Redis keeps them in its ``unacked`` hash. False where the broker does not expose them
    #: (RabbitMQ): then only the workers themselves can tell.
    shows_unacked: ClassVar[bool] = False
    #: True when :meth:`iter_pages` / :meth:`iter_messages` read waiting messages without consuming
    #: them (Redis lists, filesystem queue files). False where the only read is destructive.
    reads_in_place: ClassVar[bool] = False

    def __init__(self, display_url: str) -> None:
        #: The broker URL with its password masked, safe to print.
        self.display_url = display_url

    @abstractmethod
    def known_queues(self) -> list[str]:
        """Task queues the broker itself knows (bindings, queue list), internal ones excluded."""

    @abstractmethod
    def queue_stats(self, names: Sequence[str]) -> QueueReport:
        """Counts for ``names`` (in that order); a queue the broker lacks has ``exists=False``."""

    def unacked_messages(self) -> Iterator[RawMessage]:
        """Messages delivered to workers and not yet acknowledged, where the broker exposes them.

        Redis keeps them (reserved, prefetched and ETA tasks) in its ``unacked`` hash; RabbitMQ
        does not expose unacked messages, so the default yields nothing.
        """
        return iter(())

    def iter_messages(self, queue: str, *, batch: int = 1000) -> Iterator[RawMessage]:
        """Every message waiting in ``queue`` (all priority sub-queues), read without consuming,
        reordering or redelivering anything, in bounded batches; next-to-be-consumed first.

        Brokers with no non-destructive read (RabbitMQ) raise :class:`ReadRefused`.
        """
        for page in self.iter_pages(queue, batch=batch):
            yield from page.read()

    def iter_pages(self, queue: str, *, batch: int = 1000) -> Iterator[StoredPage]:
        """What :meth:`iter_messages` reads, as pages of stored bytes not yet parsed: a big queue's
        pages are parsed and judged while the next one is read (``deploykit.scan.run``)."""
        raise ReadRefused(
            f"{self.kind} brokers cannot list waiting messages without consuming them",
            ReadRefusal.NO_NON_DESTRUCTIVE_READ,
            queue,
        )

    def peek_messages(
        self, queue: str, limit: int, *, allow_quorum: bool = False
    ) -> tuple[list[RawMessage], str]:
        """Sample up to ``limit`` messages of a broker that cannot read without consuming.

        Returns the messages and what peeking did to them: one phrase naming no queue, which the
        scan says once for all the queues it applies to (e.g. ``requeued in place and marked
        redelivered (management API get)``). Only called when the user asked for it (``--peek``).
        A queue that is not peeked raises :class:`ReadRefused` saying why (a quorum queue not
        allowed, a queue the broker does not know, a stream). The default refuses.
        """
        raise ReadRefused(f"{self.kind} brokers do not support peeking", ReadRefusal.NO_PEEK, queue)

    def worker_mailboxes(self, control_exchange: str = "celery") -> list[str] | None:
        """Node names of the workers whose remote-control mailbox the broker holds.

        Lets the fleet ping exactly the expected workers and return as soon as they have all
        answered. ``None`` means the broker cannot tell: fall back to a broadcast.
        """
        return None

    def settings(self) -> BrokerSettings:
        """Deploy-relevant broker settings."""
        return BrokerSettings()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> Broker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
