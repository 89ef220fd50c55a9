"""RabbitMQ: queue counts from the management HTTP API and AMQP passive declares.

Where each number comes from (measured against RabbitMQ 3.10.8):

* **ready** and **consumers**: an AMQP ``queue.declare(passive=True)`` per queue. Its answer is
  the queue process's own state at that instant. The management API's counters instead refresh
  every ``collect_statistics_interval`` (5 s by default, ``rabbitmq.conf``; see
  https://www.rabbitmq.com/docs/management#statistics-interval): after publishing three messages
  the API showed them 1.7 s later on a classic queue and 6.7 s later on a quorum queue, and a
  queue declared a moment ago is listed with no counters at all. A passive declare costs one
  round trip (50 declares took 5 ms locally), so fresh ready counts are cheap.
* **unacked**, **queue type** and **arguments**: the management API (``GET /api/queues/{vhost}``
  with ``columns=…``, one request per 500 queues). AMQP has no way to count unacknowledged
  deliveries: ``message_count`` (AMQP 0-9-1 ``queue.declare-ok``) is ready messages only. These
  values lag by up to one statistics interval; ``None`` when the API has not reported them yet.

Mixing a fresh ready count with a lagging unacked count can, for a few seconds, miss a message
that just moved from ready to unacked (it is in neither number). deploykit never decides "idle"
from the broker alone: the workers' own ``reserved``/``active``/``scheduled`` replies, gathered at
the same time, hold such a message. The opposite error (an acked message still counted as
unacked) only makes a queue look busy a little longer, which is safe.

Without the management API (port closed, plugin disabled, HTTP 401) the counts fall back to AMQP
only: ready and consumers are known, unacked is ``None`` (unknown, never ``0``), and the report
says so in its notes. Neither AMQP nor the API can read messages without consuming them (the
API's ``POST /api/queues/{vhost}/{name}/get`` alters the queue's state,
https://www.rabbitmq.com/docs/http-api-reference), so :meth:`Broker.iter_messages` keeps its
default (``ReadRefused``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from deploykit.brokers.base import (
    DELAYED_QUEUE,
    Broker,
    BrokerSettings,
    DelayedStore,
    QueueReport,
    QueueStats,
    RawMessage,
    ReadRefusal,
    ReadRefused,
    is_delayed_queue,
    is_internal_queue,
)
from deploykit.brokers.rabbitmq_api import ManagementAPI, ManagementDown, NoSuchVhost
from deploykit.brokers.urls import (
    ManagementEndpoint,
    Redactor,
    default_management_url,
    first_url,
    management_endpoint,
    mask_url,
    split_failover,
    split_url,
    vhost_of,
)
from deploykit.config import DEFAULT_TIMEOUT, parse_duration
from deploykit.errors import DeploykitError, Unavailable, UsageError
from deploykit.messages import StoredHeaders

#: RabbitMQ's default delivery acknowledgement timeout, 30 minutes since 3.8.17
#: (https://www.rabbitmq.com/docs/consumers#acknowledgement-timeout).
DEFAULT_CONSUMER_TIMEOUT = 1800.0
#: A few fields instead of the full queue objects, which are large (rates, garbage-collection
#: details). ``policy`` is not used yet: it is here so a policy-set ``consumer-timeout`` (3.12+)
#: can be traced later without changing the request.
QUEUE_COLUMNS = "name,type,messages_ready,messages_unacknowledged,consumers,arguments,policy,state"
#: Native delayed delivery's levels (``kombu.transport.native_delayed_delivery``): 0 … 27.
DELAYED_LEVELS = 28

#: Queue states in which no message is delivered: a crashed classic queue, a quorum queue that
#: lost its majority (``minority``) or whose members are all down (rabbit_amqqueue:info ``state``).
UNHEALTHY_STATES = frozenset({"down", "crashed", "stopped", "minority", "terminated"})

FALLBACK_TAIL = "showing ready counts from AMQP only; unacked unknown"


@dataclass(frozen=True)
class Declared:
    """One passive declare's answer: ``exists=False`` when the server replied NOT_FOUND."""

    exists: bool
    ready: int | None = None
    consumers: int | None = None


class QueueProber(Protocol):
    """What :class:`RabbitMQBroker` needs from AMQP (a fake in unit tests)."""

    def declare(self, name: str) -> Declared: ...

    def close(self) -> None: ...


class QueueProbe:
    """Passive declares on one AMQP connection (a kombu ``Connection`` with the pyamqp transport).

    A passive declare of a missing queue is answered with ``404 NOT_FOUND`` *and closes the
    channel* (AMQP 0-9-1 ``queue.declare`` ``passive`` bit), so the channel is replaced after each
    refusal and reused otherwise.
    """

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._channel: Any = None

    def declare(self, name: str) -> Declared:
        from amqp.exceptions import ChannelError, NotFound

        if self._channel is None:
            self._channel = self._connection.channel()
        try:
            ok = self._channel.queue_declare(queue=name, passive=True)
        except NotFound:
            self._drop_channel()
            return Declared(exists=False)
        except ChannelError:
            # e.g. 405 RESOURCE_LOCKED: another connection's exclusive queue (a pidbox). It exists,
            # but AMQP may not look at it.
            self._drop_channel()
            return Declared(exists=True)
        return Declared(exists=True, ready=int(ok.message_count), consumers=int(ok.consumer_count))

    def _drop_channel(self) -> None:
        channel, self._channel = self._channel, None
        try:
            channel.close()
        except Exception:  # the server already closed it; nothing else to release
            pass

    def close(self) -> None:
        if self._channel is not None:
            self._drop_channel()


def _library_errors() -> tuple[type[BaseException], ...]:
    """What py-amqp and the socket raise when the server cannot be reached or refuses us (kombu's
    pyamqp ``Transport.connection_errors`` and ``channel_errors``). Anything else is a bug."""
    from amqp.exceptions import AMQPError
    from kombu.exceptions import OperationalError

    return (AMQPError, OSError, OperationalError)


def _bounded(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


class RabbitMQBroker(Broker):
    """A RabbitMQ vhost, seen through AMQP passive declares and the management HTTP API."""

    kind = "rabbitmq"

    def __init__(
        self,
        url: str,
        *,
        management_url: str | None = None,
        transport_options: Mapping[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        consumer_timeout: str | float | None = None,
        http_transport: httpx.BaseTransport | None = None,
        probe_factory: Callable[[], QueueProber] | None = None,
    ) -> None:
        """``http_transport`` and ``probe_factory`` replace the network in unit tests."""
        super().__init__(mask_url(url) or url)
        self._url = url
        self.vhost = vhost_of(url)
        self._transport_options = dict(transport_options or {})
        # ``timeout`` is the command's reply timeout (1 s by default); connecting gets a little
        # more, but never so much that an unreachable broker keeps a deploy script waiting.
        self._connect_timeout = _bounded(timeout * 2, 1.0, 5.0)
        self._io_timeout = _bounded(timeout * 5, 5.0, 30.0)
        if consumer_timeout is None or consumer_timeout == "":
            self._consumer_timeout, self._consumer_timeout_source = DEFAULT_CONSUMER_TIMEOUT, "default"
        else:
            self._consumer_timeout = parse_duration(consumer_timeout, what="consumer_timeout")
            self._consumer_timeout_source = "config"
        mgmt = management_url if management_url is not None else default_management_url(url)
        self._redact = Redactor()
        self._redact.add_url(url)
        self._redact.add_url(mgmt)
        self.management: ManagementEndpoint | None = management_endpoint(mgmt, url) if mgmt else None
        self._api: ManagementAPI | None = None
        if self.management is not None:
            self._api = ManagementAPI(
                self.management,
                timeout=httpx.Timeout(self._io_timeout, connect=self._connect_timeout),
                transport=http_transport,
                redactor=self._redact,
            )
        #: Why the management API is not used (set once, then not retried by this instance, so a
        #: polling loop does not pay a connect timeout on every round).
        self.management_problem: str | None = None if self.management else "not configured"
        self._probe_factory = probe_factory
        self._connection: Any = None
        self._probe: QueueProber | None = None

    # -- management API ---------------------------------------------------------------------
    def _management_queues(self) -> dict[str, Mapping[str, Any]] | None:
        """Queue rows by name, or ``None`` when the API cannot be used (see ``management_problem``)."""
        if self.management_problem is not None or self._api is None:
            return None
        try:
            rows = self._api.list_queues(self.vhost, QUEUE_COLUMNS)
        except NoSuchVhost:
            # The API answers and knows no such vhost: a usage error, not a fallback.
            missing = f"virtual host {self.vhost!r} does not exist"
            raise UsageError(f"broker {self.display_url}: {missing}") from None
        except ManagementDown as down:
            self.management_problem = down.problem
            return None
        return {row["name"]: row for row in rows if isinstance(row.get("name"), str)}

    # -- AMQP -------------------------------------------------------------------------------
    def _open_probe(self) -> QueueProber:
        if self._probe is not None:
            return self._probe
        if self._probe_factory is not None:
            self._probe = self._probe_factory()
            return self._probe
        from kombu import Connection

        options = dict(self._transport_options)
        # kombu's pyamqp transport passes transport options straight to ``amqp.Connection``, so a
        # project's connect_timeout would override ours: keep the smaller one.
        try:
            configured = float(options.get("connect_timeout") or self._connect_timeout)
        except (TypeError, ValueError):
            configured = self._connect_timeout
        options["connect_timeout"] = min(configured, self._connect_timeout)
        # py-amqp reads with no timeout by default: a stalled server would hang us forever.
        options.setdefault("read_timeout", self._io_timeout)
        options.setdefault("write_timeout", self._io_timeout)
        # Shown in the management UI's connection list, so operators know who is looking.
        options.setdefault("client_properties", {"connection_name": "deploykit (read-only)"})
        connection = Connection(self._url, transport_options=options, connect_timeout=self._connect_timeout)
        hosts = len(split_failover(self._url))
        try:
            # One attempt per failover host and no sleeping in between: kombu's defaults retry
            # with 2 s pauses, too slow for a "broker down" answer.
            connection.ensure_connection(
                max_retries=max(hosts - 1, 0),
                interval_start=0,
                interval_step=0,
                interval_max=0,
                reraise_as_library_errors=False,
            )
        except _library_errors() as exc:
            _release(connection)
            raise self._translate(exc) from None
        except BaseException:
            _release(connection)
            raise
        self._connection = connection
        self._probe = QueueProbe(connection)
        return self._probe

    def _declare_all(self, names: Sequence[str]) -> dict[str, Declared]:
        """Passive-declare ``names``; a connection reused from an earlier call may have died,
        so a failure on a reused connection is retried once on a new one."""
        for attempt in range(2):
            reused = self._probe is not None
            try:
                probe = self._open_probe()
                return {name: probe.declare(name) for name in dict.fromkeys(names)}
            except _library_errors() as exc:
                self._close_amqp()
                if not (reused and attempt == 0):
                    raise self._translate(exc) from None
            except BaseException:  # a deploykit error, or a bug (exit 70): never "unreachable"
                self._close_amqp()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(self, exc: BaseException) -> DeploykitError:
        """Library exceptions → deploykit errors, with no password in the message."""
        from amqp import exceptions as amqp_errors

        where = self.display_url
        reply = getattr(exc, "reply_text", None)
        text = self._redact(str(reply or exc)) or type(exc).__name__
        if isinstance(exc, amqp_errors.AccessRefused):
            return UsageError(f"broker {where} rejected the credentials: {text}")
        if isinstance(exc, amqp_errors.NotAllowed):
            # 530 NOT_ALLOWED on connection.open: "vhost x not found" or "access to vhost 'x'
            # refused for user 'u'" (rabbit_reader / rabbit_access_control).
            return UsageError(f"broker {where}: cannot open virtual host {self.vhost!r}: {text}")
        if isinstance(exc, socket.gaierror):
            host = split_url(first_url(self._url)).hostname
            return Unavailable(f"cannot reach broker {where}: host name {host!r} does not resolve")
        if isinstance(exc, TimeoutError):
            return Unavailable(
                f"cannot reach broker {where}: timed out (connect {self._connect_timeout:g}s, "
                f"read {self._io_timeout:g}s)"
            )
        if isinstance(exc, ConnectionRefusedError):
            return Unavailable(f"cannot reach broker {where}: connection refused")
        return Unavailable(f"cannot reach broker {where}: {text}")

    def _close_amqp(self) -> None:
        if self._probe is not None:
            try:
                self._probe.close()
            except Exception:  # a broken connection must not mask the real error
                pass
            self._probe = None
        if self._connection is not None:
            _release(self._connection)
            self._connection = None

    # -- Broker interface -------------------------------------------------------------------
    def known_queues(self) -> list[str]:
        """Task queues the management API lists; ``[]`` (unknown) without the API.

        Leaves out Celery's internal queues, the ``celery_delayed_*`` queues (reported as
        :attr:`QueueReport.delayed`) and server-named ``amq.*`` queues, which no client may declare.
        """
        listing = self._management_queues()
        if listing is None:
            return []
        return sorted(
            name
            for name in listing
            if not is_internal_queue(name) and not is_delayed_queue(name) and not name.startswith("amq.")
        )

    def queue_stats(self, names: Sequence[str]) -> QueueReport:
        """Counts for ``names``: ready and consumers fresh from AMQP, unacked from the API.

        The management API's unacked counts lag by up to ``collect_statistics_interval`` (5 s);
        see the module docstring for why ready counts come from passive declares instead.
        """
        listing = self._management_queues()
        if listing is not None:
            delayed_names = sorted((n for n in listing if is_delayed_queue(n)), key=_delayed_level)
            declared = self._declare_all([*names, *delayed_names])
        else:
            declared = self._declare_all(names)
            # Without the queue list, look for the queue every delayed publish enters first
            # (Celery's send_task hard-codes celery_delayed_27: celery/app/base.py, Celery.send_task).
            entry = f"celery_delayed_{DELAYED_LEVELS - 1}"
            first = self._declare_all([entry])
            delayed_names = []
            if first[entry].exists:
                delayed_names = [f"celery_delayed_{level}" for level in range(DELAYED_LEVELS)]
                declared.update(self._declare_all(delayed_names))
        rows = tuple(self._stats_for(name, declared[name], listing) for name in names)
        notes: list[str] = []
        source = "management-api"
        if listing is None:
            source = "amqp-passive"
            notes.append(f"management API {self.management_problem}: {FALLBACK_TAIL}")
        else:
            for name in dict.fromkeys(names):
                state = listing.get(name, {}).get("state")
                if declared[name].exists and state in UNHEALTHY_STATES:
                    notes.append(
                        f"queue {name} is in state {state!r} (management API): consumers get nothing"
                    )
        delayed = self._delayed_store(delayed_names, declared, listing)
        return QueueReport(rows, source=source, notes=tuple(notes), delayed=delayed)

    def _stats_for(
        self, name: str, fresh: Declared, listing: Mapping[str, Mapping[str, Any]] | None
    ) -> QueueStats:
        if not fresh.exists:
            return QueueStats(name=name, exists=False)
        row = listing.get(name) if listing is not None else None
        if row is None:
            # No management row: the API is down, or the queue appeared after the list was read.
            return QueueStats(name=name, ready=fresh.ready, consumers=fresh.consumers)
        arguments = row.get("arguments")
        arguments = dict(arguments) if isinstance(arguments, dict) else {}
        queue_type = row.get("type") if isinstance(row.get("type"), str) else None
        return QueueStats(
            name=name,
            ready=fresh.ready if fresh.ready is not None else _count(row, "messages_ready"),
            unacked=_count(row, "messages_unacknowledged"),
            consumers=fresh.consumers if fresh.consumers is not None else _count(row, "consumers"),
            queue_type=queue_type or arguments.get("x-queue-type"),
            arguments=arguments,
        )

    def _delayed_store(
        self,
        names: Sequence[str],
        declared: Mapping[str, Declared],
        listing: Mapping[str, Mapping[str, Any]] | None,
    ) -> DelayedStore | None:
        present = [n for n in names if declared[n].exists]
        if not present:
            return None
        total: int | None = 0
        for name in present:
            ready = declared[name].ready
            if ready is None and listing is not None and name in listing:
                ready = _count(listing[name], "messages_ready")
            total = None if total is None or ready is None else total + ready
        note = None
        if listing is None:
            note = "found by their default names without the management API; prefixed ones are not seen"
        # Nothing consumes these queues (messages leave them by TTL and dead-lettering), so ready
        # is every message they hold.
        return DelayedStore(queues=tuple(present), messages=total, note=note)

    def peek_messages(
        self, queue: str, limit: int, *, allow_quorum: bool = False
    ) -> tuple[list[RawMessage], str]:
        """Sample up to ``limit`` messages through the management API's ``get`` — which is not a
        read: RabbitMQ has no non-destructive peek (https://www.rabbitmq.com/docs/http-api-reference,
        ``POST /api/queues/{vhost}/{name}/get``). ``ack_requeue_true`` puts them back: in place but
        marked ``redelivered`` on classic queues; at the back, with ``x-delivery-count`` raised, on
        quorum queues (where RabbitMQ 4's default delivery limit of 20 then drops or dead-letters
        them), so quorum queues are refused unless allowed.
        """
        rows = self._management_queues()
        if rows is None:
            raise Unavailable(f"cannot peek {queue}: the management API {self.management_problem}")
        row = rows.get(queue)
        if row is None:
            raise ReadRefused(
                f"queue {queue} not peeked: the broker does not know it", ReadRefusal.UNKNOWN_QUEUE, queue
            )
        queue_type = row.get("type")
        if queue_type == "stream":
            raise ReadRefused(
                f"queue {queue} not peeked: streams are not task queues", ReadRefusal.NOT_A_TASK_QUEUE, queue
            )
        if queue_type == "quorum" and not allow_quorum:
            waiting = _count(row, "messages_ready")
            raise ReadRefused(
                f"queue {queue} not peeked ({waiting if waiting is not None else '?'} message(s) unchecked): "
                "it is a quorum queue, where peeking moves messages to the back and counts towards "
                "their delivery limit; pass --force to accept that",
                ReadRefusal.QUORUM_QUEUE,
                queue,
            )
        assert self._api is not None
        try:
            items = self._api.get_messages(self.vhost, queue, limit)
        except ManagementDown as down:
            raise Unavailable(f"cannot peek {queue}: {down.reason}") from None
        messages = [_peeked(queue, item) for item in items]
        effect = (
            "moved to the back of the queue with their delivery count raised"
            if queue_type == "quorum"
            else "requeued in place and marked redelivered"
        )
        return messages, f"{effect} (management API get)"

    def worker_mailboxes(self, control_exchange: str = "celery") -> list[str] | None:
        """Nodes whose ``<node>.<control_exchange>.pidbox`` queue exists; ``None`` without the API.

        Reply queues (``<uuid>.reply.<exchange>.pidbox``) are not mailboxes; node names always
        hold an ``@`` (Celery's ``default_nodename``).
        """
        listing = self._management_queues()
        if listing is None:
            return None
        suffix = f".{control_exchange}.pidbox"
        nodes = set()
        for name in listing:
            if name.endswith(suffix) and not name.endswith(".reply" + suffix):
                node = name[: -len(suffix)]
                if "@" in node:
                    nodes.add(node)
        return sorted(nodes)

    def settings(self) -> BrokerSettings:
        """``consumer_timeout``: the configured value, else RabbitMQ's default (30 min).

        The server's effective value is a ``rabbitmq.conf`` setting that the management API does
        not expose (``/api/overview`` and ``/api/nodes/{node}`` carry no application environment;
        checked on 3.10.8, where only ``rabbitmqctl environment`` shows it), so it is not read.
        Per-queue ``x-consumer-timeout`` arguments (3.12+) are in :attr:`QueueStats.arguments`.
        """
        return BrokerSettings(
            consumer_timeout=self._consumer_timeout,
            consumer_timeout_source=self._consumer_timeout_source,
        )

    def close(self) -> None:
        self._close_amqp()
        if self._api is not None:
            self._api.close()


def _peeked(queue: str, item: Mapping[str, Any]) -> RawMessage:
    """A message from the management API's ``get`` reply (payload base64, properties as AMQP has them)."""
    found = item.get("properties")
    props: dict[str, Any] = found if isinstance(found, dict) else {}
    found = props.get("headers")
    headers: dict[str, Any] = found if isinstance(found, dict) else {}
    # The API shows AMQP void (None) header values as the string "undefined".
    headers = {k: (None if v == "undefined" else v) for k, v in headers.items()}
    size = item.get("payload_bytes")
    return RawMessage(
        "ready",
        queue,
        StoredHeaders.from_mapping(headers),
        item.get("payload", ""),
        "base64" if item.get("payload_encoding") == "base64" else None,
        props.get("content_type"),
        props.get("content_encoding"),
        size if isinstance(size, int) else 0,
        None,
        None,
    )


def _count(row: Mapping[str, Any], key: str) -> int | None:
    value = row.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _delayed_level(name: str) -> int:
    match = DELAYED_QUEUE.match(name)
    return int(match.group(1)) if match else 0


def _release(connection: Any) -> None:
    try:
        connection.release()
    except Exception:  # closing a broken connection must not mask the real error
        pass
