"""The probe's Celery/kombu side: publishing probe messages and reading their confirmations.

The probe is Celery's built-in ``celery.accumulate`` (``celery/app/builtins.py``): every worker
has it registered, whatever the app, and it only returns its arguments. It is published straight
to the queue (the default exchange routes by queue name on RabbitMQ and on kombu's virtual
transports) with an ``expires`` just past the deadline, so a probe that could not run in time is
discarded by the worker instead of running late. Execution is confirmed through the result
backend (the stored results are forgotten afterwards) or through task events, as
:func:`deploykit.probe.core.confirmation_method` decided.

Everything here is I/O; the decisions live in :mod:`deploykit.probe.core`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from deploykit.brokers.urls import Redactor
from deploykit.errors import Unavailable
from deploykit.fleet.base import Fleet
from deploykit.inspection import QueueRow
from deploykit.probe.core import PROBE_ID_PREFIX, Prober, ProbeReport, probe_queues

PROBE_TASK = "celery.accumulate"
#: Results and events are decoded with these content types only: never pickle.
SAFE_CONTENT_TYPES = ["application/json", "application/x-msgpack", "application/x-yaml"]


class CeleryProbe:
    """Publishes probes with the app's connection and collects confirmations."""

    def __init__(
        self, app: Any, *, method: str, display_url: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._app = app
        self._method = method
        self._display_url = display_url
        self._clock = clock
        self._connection: Any = None
        self._events_connection: Any = None
        self._events_consumer: Any = None
        self.seen: dict[str, dict[str, Any]] = {}

    # -- connections ------------------------------------------------------------------------
    def open(self) -> None:
        from deploykit.fleet.control import broker_errors

        self._connection = self._app.connection_for_write()
        try:
            with broker_errors(self._display_url, self._connection):
                self._connection.ensure_connection(
                    max_retries=1, interval_start=0, interval_step=0, interval_max=0
                )
                if self._method == "events":
                    self._start_event_consumer()
        except BaseException:
            self.close()
            raise

    def _start_event_consumer(self) -> None:
        from celery.events.receiver import EventReceiver
        from kombu import Consumer
        from kombu.utils.uuid import uuid

        conn = self._app.connection_for_read()
        conn.ensure_connection(max_retries=1)
        self._events_connection = conn
        receiver = EventReceiver(
            conn, app=self._app, routing_key="task.#", node_id=f"deploykit-probe-{uuid()}"
        )
        accept = list(SAFE_CONTENT_TYPES)
        consumer = Consumer(conn.default_channel, [receiver.queue], no_ack=True, accept=accept)
        consumer.register_callback(self._on_event)
        consumer.consume()
        self._events_consumer = consumer
        # kombu's Redis transport subscribes to the fanout channel on the first drain: do it now,
        # before any probe is sent, so no event can be missed.
        self._drain(0.05)

    def close(self) -> None:
        for attr in ("_events_consumer",):
            consumer = getattr(self, attr)
            if consumer is not None:
                try:
                    consumer.cancel()
                except Exception:
                    pass
                setattr(self, attr, None)
        for attr in ("_events_connection", "_connection"):
            conn = getattr(self, attr)
            if conn is not None:
                try:
                    conn.release()
                except Exception:
                    pass
                setattr(self, attr, None)

    # -- events -----------------------------------------------------------------------------
    def _on_event(self, body: Any, message: Any) -> None:
        # Workers buffer task events and flush them as a list (EventDispatcher buffer_group).
        for event in body if isinstance(body, list) else [body]:
            if isinstance(event, Mapping):
                self._on_one_event(event)

    def _on_one_event(self, body: Mapping[str, Any]) -> None:
        task_id = body.get("uuid")
        if not isinstance(task_id, str) or not task_id.startswith(PROBE_ID_PREFIX):
            return
        kind = body.get("type")
        entry = self.seen.setdefault(task_id, {})
        if kind == "task-received":
            entry.setdefault("received_by", body.get("hostname"))
            entry.setdefault("received_at", self._clock())
        elif kind in {"task-succeeded", "task-failed", "task-revoked", "task-rejected"}:
            entry["final"] = kind
            entry["worker"] = body.get("hostname")
            entry["at"] = self._clock()
            if kind != "task-succeeded":
                entry["detail"] = str(body.get("exception") or kind)

    def _drain(self, timeout: float) -> None:
        if self._events_connection is None:
            time.sleep(timeout)
            return
        from deploykit.fleet.control import broker_errors

        with broker_errors(self._display_url, self._events_connection):
            try:
                self._events_connection.drain_events(timeout=max(timeout, 0.001))
            except TimeoutError:
                pass
            except OSError as exc:  # socket.timeout is an OSError subclass on 3.10+
                if "timed out" not in str(exc):
                    raise

    # -- probes -----------------------------------------------------------------------------
    def send(self, queue: str, task_id: str, expires_in: float) -> float:
        """Publish one probe to ``queue``; returns the monotonic time it was sent."""
        conf = self._app.conf
        serializer = str(conf.task_serializer or "json")
        message = self._app.amqp.create_task_message(
            task_id,
            PROBE_TASK,
            (task_id,),
            {},
            expires=expires_in,
            ignore_result=self._method != "result-backend",
            argsrepr=repr((task_id,)),
            kwargsrepr="{}",
        )
        headers, properties, body, _sent_event = message
        from deploykit.fleet.control import broker_errors

        with broker_errors(self._display_url, self._connection):
            producer = self._connection.Producer(serializer=serializer)
            producer.publish(
                body,
                exchange="",
                routing_key=queue,
                headers=headers,
                serializer=serializer,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
                declare=None,
                **properties,
            )
        return self._clock()

    def poll(self, pending: Sequence[str], wait: float) -> None:
        """Update :attr:`seen` for ``pending`` probes, waiting at most ``wait`` seconds."""
        if self._method == "events":
            self._drain(wait)
            return
        backend = self._app.backend
        for task_id in pending:
            try:
                meta = backend.get_task_meta(task_id, cache=False)
            except Exception as exc:
                if not backend_unreachable(exc, backend):
                    raise  # a deploykit bug: exit 70 with the traceback
                reason = Redactor()(str(exc)) or type(exc).__name__
                raise Unavailable(f"result backend unreachable: {type(exc).__name__}: {reason}") from None
            state = meta.get("status")
            if state in {"SUCCESS", "FAILURE", "REVOKED"}:
                entry = self.seen.setdefault(task_id, {})
                entry["final"] = "task-succeeded" if state == "SUCCESS" else f"task-{str(state).lower()}"
                entry["worker"] = meta.get("worker")  # with result_extended only
                entry["at"] = self._clock()
                if state != "SUCCESS":
                    entry["detail"] = str(state)
        time.sleep(wait)

    def forget(self, task_ids: Sequence[str]) -> None:
        """Delete the probes' stored results (result-backend mode)."""
        if self._method != "result-backend":
            return
        for task_id in task_ids:
            try:
                self._app.backend.forget(task_id)
            except Exception:
                pass


def backend_unreachable(exc: BaseException, backend: Any) -> bool:
    """Whether ``exc`` means the result backend's server cannot be reached.

    Socket errors, kombu's ``OperationalError``, the backend's own ``connection_errors`` where it
    lists them (Celery's Redis backend: redis-py's), and a database driver's ``OperationalError``
    or ``InterfaceError`` (the DB-API names for a lost or refused connection,
    https://peps.python.org/pep-0249/#exceptions). Anything else is a deploykit bug.
    """
    from kombu.exceptions import OperationalError

    listed = getattr(backend, "connection_errors", ())
    known = tuple(e for e in listed if isinstance(e, type) and e.__module__ != "builtins")
    if isinstance(exc, (OSError, OperationalError, *known)):
        return True
    return any(cls.__name__ in {"OperationalError", "InterfaceError"} for cls in type(exc).__mro__)


def run_probe(
    app: Any,
    fleet: Fleet,
    rows: Sequence[QueueRow],
    *,
    requested: Sequence[str] = (),
    workers: Sequence[str] = (),
    timeout: float = 10.0,
    confirm_via: str = "auto",
    display_url: str = "",
    clock: Callable[[], float] = time.monotonic,
    probe_app: Any = None,
) -> ProbeReport:
    """:func:`~deploykit.probe.core.probe_queues` with real probes on Celery's connection.

    ``app`` is the user's app (``None`` with only ``-b``): it decides how execution is confirmed.
    ``probe_app`` (default ``app``) provides the broker connection.
    """

    def make_probe(method: str) -> Prober:
        return CeleryProbe(probe_app or app, method=method, display_url=display_url, clock=clock)

    return probe_queues(
        app,
        fleet,
        rows,
        make_probe,
        requested=requested,
        workers=workers,
        timeout=timeout,
        confirm_via=confirm_via,
        clock=clock,
    )
