"""Any other kombu transport (SQS, memory, …): ready counts through a passive ``queue_declare``.

That is all a transport-neutral client can learn without consuming: no queue list, no unacked or
ETA counts, no way to read waiting messages (``iter_messages`` keeps the base class's refusal).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

from kombu import Connection
from kombu.exceptions import ChannelError, OperationalError
from kombu.transport import virtual

from deploykit.brokers.base import Broker, QueueReport, QueueStats
from deploykit.brokers.urls import Redactor, mask_url
from deploykit.errors import Unavailable, UsageError

MAX_CONNECT_TIMEOUT = 3.0


class KombuBroker(Broker):
    """Ready counts for any kombu transport; everything else is unknown (``None``)."""

    kind: ClassVar[str] = "kombu"

    def __init__(self, url: str, *, transport_options: Mapping[str, Any], timeout: float) -> None:
        super().__init__(mask_url(url) or "")
        self._redact = Redactor()
        self._redact.add_url(url)
        self._connection = Connection(
            url,
            transport_options=dict(transport_options),
            connect_timeout=min(max(float(timeout), 0.1), MAX_CONNECT_TIMEOUT),
        )
        self._connected = False

    @contextmanager
    def _errors(self) -> Iterator[None]:
        conn = self._connection
        try:
            yield
        except Exception as exc:
            name = type(exc).__name__
            reason = self._redact(str(exc)) or name
            if "auth" in name.lower() or "AccessRefused" in name or "credential" in reason.lower():
                raise UsageError(f"broker rejected the credentials in {self.display_url!r}") from None
            if isinstance(exc, (*conn.connection_errors, OperationalError, OSError)):
                raise Unavailable(f"cannot reach the broker at {self.display_url}: {reason}") from None
            raise

    def _connect(self) -> Connection:
        if not self._connected:
            with self._errors():
                # One attempt: an unreachable broker is reported, not retried for minutes.
                self._connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
            self._connected = True
        return self._connection

    def known_queues(self) -> list[str]:
        return []  # kombu has no transport-neutral way to list queues

    def queue_stats(self, names: Sequence[str]) -> QueueReport:
        transport = self._connection.transport_cls
        note = f"kombu transport {transport!r}: only ready counts are known (no unacked or ETA counts)"
        if not names:
            return QueueReport((), source="kombu", notes=(note,))
        conn = self._connect()
        # Virtual transports always answer consumer_count=0 (virtual Channel.queue_declare).
        consumers_known = not isinstance(conn.transport, virtual.Transport)
        rows = []
        with self._errors():
            for name in names:
                # A missing queue closes the channel (AMQP 404), so each probe gets a fresh one.
                channel = conn.channel()
                try:
                    ok = channel.queue_declare(queue=name, passive=True)
                except (*conn.channel_errors, ChannelError):
                    rows.append(QueueStats(name=name, exists=False))
                    continue
                finally:
                    try:
                        channel.close()
                    except Exception:  # a channel the broker already closed
                        pass
                rows.append(
                    QueueStats(
                        name=name,
                        ready=int(ok.message_count),
                        consumers=int(ok.consumer_count) if consumers_known else None,
                    )
                )
        return QueueReport(tuple(rows), source="kombu", notes=(note,))

    def close(self) -> None:
        try:
            self._connection.release()
        except Exception:  # closing is best effort
            pass
