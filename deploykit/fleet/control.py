"""The real fleet: kombu's pidbox mailbox, driven so replies never wait out a fixed timeout.

Celery's ``inspect`` collects replies until none arrives for ``timeout`` seconds, unless it knows
how many replies to expect (``limit``: Celery ``app/control.py`` ``Inspect``, kombu ``pidbox.py``
``Mailbox._collect``). We know: the broker lists the workers' mailboxes, so we ping exactly those
and stop when all answered. We
also send every inspect command at once, each with its own ticket, and collect all replies on the
shared reply queue in one wait — one round trip instead of one per command.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from deploykit.errors import DeploykitError, Unavailable, UsageError
from deploykit.fleet.base import Fleet, Replies

#: Replies are decoded with these serializers only: never pickle, whatever the app accepts.
SAFE_ACCEPT = ("application/json", "application/x-msgpack", "application/x-yaml")


class CeleryFleet(Fleet):
    """Remote control over a Celery app's broker connection."""

    def __init__(
        self,
        app: Any,
        *,
        timeout: float,
        display_url: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._app = app
        self._timeout = timeout
        self._display_url = display_url
        self._clock = clock
        self._connection: Any = None
        self._mailbox: Any = None

    # -- connection -------------------------------------------------------------------------
    def _open(self) -> Any:
        if self._mailbox is None:
            connection = self._app.connection_for_write()
            with broker_errors(self._display_url, connection):
                # One retry, without kombu's default 2 s pause before it: an unreachable broker
                # is reported at once (kombu ``Connection.ensure_connection``, ``interval_start``).
                connection.ensure_connection(
                    max_retries=1,
                    interval_start=0,
                    interval_step=0,
                    interval_max=0,
                    timeout=max(self._timeout, 2.0),
                )
            self._connection = connection
            self._mailbox = self._app.control.mailbox(connection)
        return self._mailbox

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:  # closing a broken connection must not mask the real error
                pass
            self._connection = None
            self._mailbox = None

    # -- requests ---------------------------------------------------------------------------
    def ping(self, destination: Sequence[str] | None = None) -> list[str]:
        if destination is not None and not destination:
            return []
        replies = self._request({"ping": {}}, destination)
        return sorted(replies.by_command.get("ping", {}))

    def gather(self, commands: Mapping[str, Mapping[str, Any]], destination: Sequence[str]) -> Replies:
        if not destination or not commands:
            return Replies({command: {} for command in commands})
        return self._request(commands, destination)

    def control(
        self,
        command: str,
        arguments: Mapping[str, Any],
        destination: Sequence[str],
        *,
        reply: bool = True,
    ) -> Mapping[str, Any]:
        if not destination:
            return {}
        if not reply:
            mailbox = self._open()
            with broker_errors(self._display_url, self._connection):
                mailbox._publish(
                    command,
                    dict(arguments),
                    destination=list(destination),
                    channel=self._connection.default_channel,
                    timeout=self._timeout,
                    serializer="json",
                )
            return {}
        return self._request({command: arguments}, destination).by_command.get(command, {})

    def _request(
        self, commands: Mapping[str, Mapping[str, Any]], destination: Sequence[str] | None
    ) -> Replies:
        from kombu import Consumer
        from kombu.utils.uuid import uuid

        mailbox = self._open()
        channel = self._connection.default_channel
        start = self._clock()
        tickets: dict[str, str] = {}
        with broker_errors(self._display_url, self._connection):
            for command, arguments in commands.items():
                ticket = uuid()
                tickets[ticket] = command
                # Mailbox._publish is kombu's own request path (pidbox.py); it declares the reply
                # queue and stamps ``expires`` so late workers drop a stale request.
                mailbox._publish(
                    command,
                    dict(arguments),
                    destination=list(destination) if destination is not None else None,
                    reply_ticket=ticket,
                    channel=channel,
                    timeout=self._timeout,
                    serializer="json",
                )

        by_command: dict[str, dict[str, Any]] = {command: {} for command in commands}
        expected = len(destination) * len(commands) if destination is not None else None
        received = 0

        def on_message(body: Any, message: Any) -> None:
            nonlocal received
            command = tickets.get(message.headers.get("ticket"))
            expires = message.headers.get("expires")
            if command is None or (expires and time.time() > expires) or not isinstance(body, dict):
                return
            for node, answer in body.items():
                if destination is not None and node not in destination:
                    continue
                if node not in by_command[command]:
                    received += 1
                by_command[command][node] = answer

        consumer = Consumer(channel, [mailbox.reply_queue], accept=list(SAFE_ACCEPT), no_ack=True)
        consumer.register_callback(on_message)
        deadline = start + self._timeout
        try:
            with broker_errors(self._display_url, self._connection), consumer:
                while expected is None or received < expected:
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        break
                    try:
                        self._connection.drain_events(timeout=remaining)
                    except TimeoutError:
                        break
        finally:
            try:
                # On virtual transports (Redis) this deletes the reply queue (kombu virtual/base.py).
                channel.after_reply_message_received(mailbox.reply_queue.name)
            except Exception:
                pass
        missing: tuple[str, ...] = ()
        if destination is not None:
            missing = tuple(sorted(n for n in destination if any(n not in by_command[c] for c in commands)))
        return Replies(by_command, missing=missing, elapsed=self._clock() - start)


def library_errors(connection: Any = None) -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the broker cannot be reached or refused us", for ``connection``.

    Socket-level errors (``OSError``: refused, reset, timed out, TLS, a missing filesystem-transport
    folder), kombu's ``OperationalError`` (what ``ensure_connection`` raises), and the transport's
    own ``connection_errors``/``channel_errors`` (kombu ``Transport``: redis-py's, py-amqp's), minus
    the builtins kombu lists there (the Redis transport lists ``KeyError``): a ``KeyError`` is a bug.
    """
    from kombu.exceptions import ChannelError, ConnectionError, OperationalError

    found: list[type[BaseException]] = [OSError, OperationalError, ConnectionError, ChannelError]
    if connection is not None:
        try:
            listed = (*connection.connection_errors, *connection.channel_errors)
        except Exception:  # the transport cannot even be loaded: no list to add
            listed = ()
        found.extend(e for e in listed if isinstance(e, type) and e.__module__ != "builtins")
    return tuple(dict.fromkeys(found))


@contextmanager
def broker_errors(display_url: str, connection: Any = None) -> Iterator[None]:
    """Translate the broker library's connection and channel errors into deploykit's (exit 2 or
    69, no password in the message). Anything else is a deploykit bug and propagates (exit 70)."""
    try:
        yield
    except DeploykitError:
        raise
    except library_errors(connection) as exc:
        raise translate_broker_error(exc, display_url) from None


def translate_broker_error(exc: BaseException, display_url: str) -> DeploykitError:
    """One library connection/channel error as a deploykit error (no secrets in the message)."""
    from deploykit.brokers.urls import Redactor

    if isinstance(exc, FileNotFoundError):
        # kombu's filesystem transport: a data folder that does not exist is a configuration error.
        return UsageError(
            f"broker {display_url}: {exc.strerror}: {exc.filename!r} "
            "(set data_folder_in/data_folder_out in the transport options)"
        )
    scrub = Redactor()
    text = scrub(str(exc)) or type(exc).__name__
    name = type(exc).__name__
    if name == "VersionMismatch":  # kombu: the installed client library is too old or too new for it
        return UsageError(f"broker {display_url}: {text} (install the client version this kombu supports)")
    lowered = text.lower()
    if (
        "access_refused" in lowered
        or "authentication" in lowered
        or "auth" in name.lower()
        or "invalid username-password" in lowered
        or "wrongpass" in lowered
        or "noauth" in lowered
    ):
        return UsageError(f"broker {display_url} rejected the credentials: {text}")
    if "not_allowed" in lowered and "vhost" in lowered:
        return UsageError(f"broker {display_url}: {text}")
    return Unavailable(f"cannot reach broker {display_url}: {text}")
