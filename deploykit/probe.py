"""``deploykit probe``: send a probe task through each queue and wait until it has really run.

Workers that answer ``ping`` can still leave a queue unprocessed: a cancelled consumer, every
pool process stuck in a long task, a binding gone. The only check that proves a queue works is a
task that goes through it (celery/celery#4079). The probe is Celery's built-in ``celery.accumulate``
(``celery/app/builtins.py``): every worker has it registered, whatever the app, and it only
returns its arguments.

It is published straight to the queue (the default exchange routes by queue name on RabbitMQ and
on kombu's virtual transports) with an ``expires`` just past the deadline, so a probe that could
not run in time is discarded by the worker instead of running late. Execution is confirmed
through the result backend when the app has a storing one with a safe serializer (the stored
results are forgotten afterwards), otherwise through task events: events are enabled only on
workers that had them off, and disabled again on exactly those.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from deploykit.brokers.urls import NON_STORING_BACKENDS, Redactor, backend_scheme
from deploykit.errors import Unavailable, UsageError
from deploykit.fleet.base import Fleet
from deploykit.inspection import FleetView, QueueRow

PROBE_TASK = "celery.accumulate"
PROBE_ID_PREFIX = "deploykit-probe-"
#: Serializers whose decoding cannot run code; results and events are read with these only.
SAFE_SERIALIZERS = {"json", "msgpack", "yaml"}
SAFE_CONTENT_TYPES = ["application/json", "application/x-msgpack", "application/x-yaml"]
_POLL = 0.05


@dataclass(frozen=True)
class ProbeResult:
    """What happened to the probe of one queue."""

    queue: str
    #: ``processed``, ``timeout``, ``failed`` (the probe raised) or ``no-consumers`` (not sent).
    status: str
    worker: str | None = None
    #: Seconds from publishing to the confirmation.
    latency: float | None = None
    consumers: tuple[str, ...] = ()
    #: Messages that were waiting in the queue ahead of the probe.
    ready_ahead: int | None = None
    task_id: str | None = None
    detail: str | None = None

    @property
    def processed(self) -> bool:
        return self.status == "processed"


@dataclass(frozen=True)
class ProbeReport:
    results: tuple[ProbeResult, ...]
    #: ``result-backend`` or ``events``.
    confirmed_via: str
    timeout: float
    elapsed: float
    #: Workers whose task events deploykit switched on for the probe (and off again).
    events_enabled_on: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(r.processed for r in self.results)


# --------------------------------------------------------------------------------------------
# pure decisions
def select_queues(
    rows: Sequence[QueueRow], requested: Sequence[str]
) -> tuple[list[QueueRow], list[ProbeResult]]:
    """The queues to probe, and results for requested queues nothing consumes (never probed).

    By default every queue with consumers; with ``requested``, exactly those (a requested queue
    without consumers fails: a readiness check for it must not pass).
    """
    by_name = {row.name: row for row in rows}
    to_probe: list[QueueRow] = []
    unserved: list[ProbeResult] = []
    names = list(dict.fromkeys(requested)) if requested else [r.name for r in rows]
    for name in names:
        row = by_name.get(name)
        has_consumers = row is not None and (row.consumers or 0) > 0
        if has_consumers and row is not None:
            to_probe.append(row)
        elif requested:
            missing = row is None or not row.exists
            unserved.append(
                ProbeResult(
                    queue=name,
                    status="no-consumers",
                    ready_ahead=row.ready if row else None,
                    detail="the broker does not know this queue" if missing else "no worker consumes it",
                )
            )
    return to_probe, unserved


def confirmation_method(app: Any, requested: str = "auto") -> tuple[str, str | None]:
    """``result-backend`` when the app stores results safely, else ``events``; with the reason."""
    if requested == "events":
        return "events", None
    reason = _backend_unusable(app)
    if requested == "backend":
        if reason:
            raise UsageError(f"--confirm-via backend: {reason}")
        return "result-backend", None
    return ("events", reason) if reason else ("result-backend", None)


def _backend_unusable(app: Any) -> str | None:
    if app is None:
        return "no app (-A): no result backend known"
    conf = app.conf
    backend = conf.result_backend
    if not backend:
        return "the app has no result backend"
    scheme = backend_scheme(backend)
    if scheme in NON_STORING_BACKENDS:
        return f"the {scheme} result backend stores nothing to read back"
    if str(conf.result_serializer) not in SAFE_SERIALIZERS:
        return f"results use the {conf.result_serializer} serializer, which deploykit never decodes"
    if conf.task_ignore_result:
        return "task_ignore_result is set"
    return None


def workers_without_results(confs: Mapping[str, Any]) -> list[str]:
    """Workers whose reported settings (``inspect conf``) store no task results."""
    lacking = []
    for node, conf in sorted(confs.items()):
        if not isinstance(conf, Mapping):
            continue
        backend = conf.get("result_backend")
        stores = bool(backend) and backend_scheme(backend) not in NON_STORING_BACKENDS
        if not stores or conf.get("task_ignore_result") is True:
            lacking.append(node)
    return lacking


def consumers_of(fleet: Fleet, broker: Any, control_exchange: str = "celery") -> FleetView:
    """The online workers and the queues they consume — and nothing else, so that a readiness
    check stays fast even when workers hold thousands of reserved or ETA tasks."""
    from deploykit.inspection import build_worker, discover

    discovery = discover(fleet, broker, control_exchange)
    replies = fleet.gather({"active_queues": {}}, list(discovery.nodes))
    workers = tuple(build_worker(node, replies) for node in discovery.nodes)
    return FleetView(workers=workers, discovery=discovery, partial=tuple(replies.missing))


# --------------------------------------------------------------------------------------------
# the real thing
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


def _set_events(fleet: Fleet, nodes: Sequence[str], command: str) -> dict[str, Any]:
    if not nodes:
        return {}
    return dict(fleet.control(command, {}, list(nodes), reply=True))


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
    probe: CeleryProbe | None = None,
    probe_app: Any = None,
) -> ProbeReport:
    """Probe every selected queue at once and wait until each is processed or ``timeout`` passes.

    ``app`` is the user's app (``None`` with only ``-b``): it decides how execution is confirmed.
    ``probe_app`` (default ``app``) provides the broker connection.
    """
    from kombu.utils.uuid import uuid

    start = clock()
    to_probe, unserved = select_queues(rows, requested)
    method, reason = confirmation_method(app, confirm_via)
    notes: list[str] = []
    if method == "result-backend" and confirm_via == "auto" and workers and to_probe:
        # The app may store results while the workers run without a backend (drift): ask them.
        confs = fleet.gather({"conf": {"with_defaults": False}}, list(workers)).by_command.get("conf", {})
        no_results = workers_without_results(confs)
        if no_results:
            method, reason = "events", "workers store no results: " + ", ".join(no_results)
    if reason and method == "events" and to_probe:
        notes.append(f"confirmed through task events: {reason}")
    if not to_probe:
        return ProbeReport(tuple(unserved), method, timeout, clock() - start, (), tuple(notes))
    probe = probe or CeleryProbe(probe_app or app, method=method, display_url=display_url, clock=clock)
    enabled: list[str] = []
    sent: dict[str, tuple[QueueRow, float]] = {}
    results: dict[str, ProbeResult] = {}
    probe.open()
    try:
        if method == "events":
            replies = _set_events(fleet, workers, "enable_events")
            enabled = sorted(
                node
                for node, r in replies.items()
                if isinstance(r, Mapping) and r.get("ok") == "task events enabled"
            )
            failed = sorted(node for node, r in replies.items() if isinstance(r, Mapping) and "error" in r)
            silent = sorted(set(workers) - set(replies))
            if failed:
                notes.append("cannot enable task events on " + ", ".join(failed))
            if silent:
                notes.append("no reply to enable_events from " + ", ".join(silent))
        # A little past the deadline (clock skew between hosts), so a late probe is discarded.
        expires_in = timeout + 5.0
        for row in to_probe:
            task_id = PROBE_ID_PREFIX + uuid()
            sent[task_id] = (row, probe.send(row.name, task_id, expires_in))
        deadline = start + timeout
        while True:
            pending = [t for t in sent if "final" not in probe.seen.get(t, {})]
            remaining = deadline - clock()
            if not pending or remaining <= 0:
                break
            probe.poll(pending, min(_POLL if method == "result-backend" else remaining, remaining))
        for task_id, (row, sent_at) in sent.items():
            results[row.name] = _result(row, task_id, sent_at, probe.seen.get(task_id, {}), timeout)
    finally:
        try:
            if enabled:
                replies = _set_events(fleet, enabled, "disable_events")
                left_on = sorted(set(enabled) - set(replies))
                if left_on:
                    notes.append("could not switch task events off again on " + ", ".join(left_on))
            probe.forget(list(sent))
        finally:
            probe.close()
    ordered = [results[row.name] for row in to_probe] + unserved
    return ProbeReport(tuple(ordered), method, timeout, clock() - start, tuple(enabled), tuple(notes))


def _result(
    row: QueueRow, task_id: str, sent_at: float, seen: Mapping[str, Any], timeout: float
) -> ProbeResult:
    consumers = tuple(row.consumer_workers)
    worker = seen.get("worker") or seen.get("received_by")
    if worker is None and len(consumers) == 1 and "final" in seen:
        worker = consumers[0]
    base = ProbeResult(
        queue=row.name,
        status="timeout",
        worker=worker,
        consumers=consumers,
        ready_ahead=row.ready,
        task_id=task_id,
    )
    final = seen.get("final")
    if final == "task-succeeded":
        return replace(base, status="processed", latency=seen["at"] - sent_at)
    if final is not None:
        return replace(base, status="failed", latency=seen["at"] - sent_at, detail=seen.get("detail"))
    if seen.get("received_by"):
        detail = (
            f"received by {seen['received_by']} but not run within {timeout:g}s (every pool process busy?)"
        )
    elif row.ready:
        detail = f"not processed within {timeout:g}s; {row.ready} message(s) were waiting ahead of it"
    else:
        detail = f"not processed within {timeout:g}s"
    return replace(base, detail=detail)
