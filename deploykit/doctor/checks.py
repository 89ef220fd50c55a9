"""The checks: pure functions from an :class:`~deploykit.doctor.model.Audit` to findings.

Each check knows one way a Celery deployment loses or duplicates tasks, as documented upstream
(Redis visibility timeout:
https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html#caveats;
RabbitMQ delivery acknowledgement timeout:
https://www.rabbitmq.com/docs/consumers#acknowledgement-timeout; quorum queues and native delayed
delivery:
https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/rabbitmq.html#using-quorum-queues;
worker shutdown: https://docs.celeryq.dev/en/stable/userguide/workers.html#worker-stopping) and as
reported (celery/celery#1628, #2599, #6760, #9849, #2700). Checks that read settings run once per
configuration source (the app's code and every live worker); identical findings are merged
afterwards, so a fleet of ten identical workers gives one finding that names them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from deploykit.brokers.urls import backend_scheme
from deploykit.doctor.model import (
    Audit,
    ConfigSource,
    EtaWait,
    Finding,
    Level,
    ProcessManagerEntry,
    TaskPolicy,
    finding,
)
from deploykit.findings import failing
from deploykit.output.humanize import listed

#: kombu's default ``visibility_timeout`` per transport (kombu/transport/redis.py, SQS/__init__.py).
DEFAULT_VISIBILITY_TIMEOUT = {"redis": 3600.0, "sqs": 1800.0}
#: A task that may run this long is "long" for prefetching purposes (seconds).
LONG_TASK = 60.0
#: Held ETA tasks per worker from which memory becomes a concern without ``worker_eta_task_limit``.
MANY_ETA_TASKS = 100
PICKLE = {"pickle", "application/x-python-serialize"}
#: Settings compared between the app and the workers (drift), and between workers.
DRIFT_KEYS = (
    "task_acks_late",
    "task_reject_on_worker_lost",
    "task_time_limit",
    "task_soft_time_limit",
    "worker_prefetch_multiplier",
    "task_serializer",
    "result_serializer",
    "accept_content",
    "result_backend",
    "worker_soft_shutdown_timeout",
    "worker_enable_soft_shutdown_on_idle",
    "worker_eta_task_limit",
    "broker_transport_options.visibility_timeout",
    "broker_transport_options.confirm_publish",
)

Check = Callable[[Audit], Iterable[Finding]]


# --------------------------------------------------------------------------------------------
# helpers
def seconds(value: Any) -> float | None:
    """A duration setting as seconds (``None`` when unset or not a number)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def fmt_seconds(value: float) -> str:
    if value >= 3600 and value % 3600 == 0:
        return f"{value / 3600:g}h ({value:g}s)"
    if value >= 60 and value % 60 == 0:
        return f"{value / 60:g}m ({value:g}s)"
    return f"{value:g}s"


def user_tasks(source: ConfigSource) -> list[TaskPolicy]:
    return [t for t in source.tasks if not t.name.startswith("celery.")]


def acks_late_tasks(source: ConfigSource) -> list[str] | None:
    """Tasks that ack late; ``None`` means every task (the global setting, tasks unknown)."""
    tasks = user_tasks(source)
    if not tasks:
        return None if truthy(source.get("task_acks_late")) else []
    return [t.name for t in tasks if t.acks_late]


def longest_runtime(source: ConfigSource) -> tuple[float | None, str | None]:
    """The longest a task may run under its time limits, and which task that is."""
    best: tuple[float | None, str | None] = (None, None)
    # The worker applies task_time_limit to tasks without their own limit (older Celery versions
    # do not copy it onto the task class).
    default = seconds(source.get("task_time_limit")) or seconds(source.get("task_soft_time_limit"))
    tasks = user_tasks(source)
    if tasks:
        for task in tasks:
            bound = task.runtime_bound or default
            if bound is not None and (best[0] is None or bound > best[0]):
                best = (bound, task.name)
        return best
    return (default, "every task (task_time_limit)") if default else (None, None)


def longest_runtime_all(audit: Audit) -> tuple[float | None, str | None]:
    best: tuple[float | None, str | None] = (None, None)
    for source in audit.sources:
        bound, name = longest_runtime(source)
        if bound is not None and (best[0] is None or bound > best[0]):
            best = (bound, name)
    return best


def visibility_timeout(source: ConfigSource, audit: Audit) -> float:
    value = seconds(source.transport_options.get("visibility_timeout"))
    if value is not None:
        return value
    if source.origin == "app" and audit.visibility_timeout is not None:
        return audit.visibility_timeout
    return DEFAULT_VISIBILITY_TIMEOUT.get(audit.broker_kind or "", 3600.0)


def _longest_eta(etas: Iterable[EtaWait]) -> EtaWait | None:
    return max(etas, key=lambda e: e.held_for, default=None)


def _eta_label(eta: EtaWait) -> str:
    where = f"held by {eta.worker}" if eta.worker else "in the broker's unacked hash"
    return f"{eta.name or 'a task'} ({eta.id or '?'}, due {eta.eta:%Y-%m-%d %H:%M:%S}Z, {where})"


# --------------------------------------------------------------------------------------------
# acknowledgement
def check_acks(audit: Audit) -> Iterator[Finding]:
    for source in audit.sources:
        late = acks_late_tasks(source)
        retry_lost = truthy(source.get("task_retry_on_worker_lost"))
        global_reject = truthy(source.get("task_reject_on_worker_lost"))
        tasks = {t.name: t for t in user_tasks(source)}
        # ``None`` stands for "every task" (global setting, task list unknown).
        protected: list[str] | None
        unprotected: list[str] | None
        if late is None:
            safe = global_reject or retry_lost
            protected, unprotected = (None, []) if safe else ([], None)
        else:
            protected, unprotected = [], []
            for name in late:
                reject = tasks[name].reject_on_worker_lost if name in tasks else global_reject
                (protected if truthy(reject) or retry_lost else unprotected).append(name)
        if unprotected is None or unprotected:
            which = "every task" if unprotected is None else listed(unprotected)
            yield finding(
                "ACKS_LATE_WITHOUT_REJECT",
                Level.ERROR,
                "task_acks_late without task_reject_on_worker_lost",
                f"{which} acks late, but when its pool process is killed (OOM killer, SIGKILL, a "
                "segfault) Celery acknowledges the message anyway and records WorkerLostError: "
                "the task is lost, although acks_late was chosen to survive exactly that.",
                "Set task_reject_on_worker_lost = True (the message is requeued; make the task "
                "idempotent), or on Celery 5.7+ task_retry_on_worker_lost = True to retry with "
                "max_retries as a bound.",
                where=(source.origin,),
            )
        if (protected is None or protected) and not retry_lost:
            yield finding(
                "REJECT_ON_WORKER_LOST_REDELIVERY",
                Level.INFO,
                "task_reject_on_worker_lost requeues a task that killed its worker, without limit",
                "A task that itself kills its pool process (runs out of memory, crashes the "
                "interpreter) is requeued and received again, often by the same worker: a "
                "poison message loops forever and starves the queue.",
                "Bound it: Celery 5.7+ task_retry_on_worker_lost = True honours max_retries; or "
                "use a RabbitMQ quorum queue with a delivery-limit and a dead-letter exchange.",
                where=(source.origin,),
            )
        if late != []:
            continue
        if global_reject or any(truthy(t.reject_on_worker_lost) for t in tasks.values()):
            yield finding(
                "REJECT_WITHOUT_ACKS_LATE",
                Level.INFO,
                "task_reject_on_worker_lost is set but no task acks late",
                "task_reject_on_worker_lost only applies to tasks with acks_late; the message of "
                "an early-acked task is already acknowledged when its worker dies, so it is lost.",
                "Enable task_acks_late for the tasks that must survive a killed worker (and keep "
                "task_reject_on_worker_lost), or drop the setting to avoid a false sense of safety.",
                where=(source.origin,),
            )
        else:
            yield finding(
                "ACKS_EARLY",
                Level.INFO,
                "tasks are acknowledged when they start (task_acks_late is off)",
                "A task running when its worker is killed (SIGKILL, OOM, a cold shutdown, a "
                "process manager's SIGKILL after the stop timeout) is lost: its message was "
                "acknowledged before it ran. This is at-most-once delivery.",
                "For tasks that must not be lost and are idempotent, set acks_late=True together "
                "with reject_on_worker_lost=True; keep early acks for tasks that must never run twice.",
                where=(source.origin,),
            )


# --------------------------------------------------------------------------------------------
# broker timeouts
def check_visibility_timeout(audit: Audit) -> Iterator[Finding]:
    if audit.broker_kind not in DEFAULT_VISIBILITY_TIMEOUT:
        return
    sources: Sequence[ConfigSource] = audit.sources or (ConfigSource("broker", {}),)
    longest = _longest_eta(audit.etas)
    for source in sources:
        vt = visibility_timeout(source, audit)
        if longest is not None and longest.held_for > vt:
            yield finding(
                "VISIBILITY_TIMEOUT_BELOW_ETA",
                Level.ERROR,
                f"visibility_timeout {fmt_seconds(vt)} is shorter than the longest ETA waiting "
                f"({fmt_seconds(round(longest.held_for))})",
                f"{_eta_label(longest)} stays unacknowledged until it is due. After "
                f"{fmt_seconds(vt)} any worker's restore sweep puts it back in the queue while it "
                "is still held, so it is received again and runs twice (or loops, once per sweep).",
                "Raise broker_transport_options['visibility_timeout'] (and "
                "result_backend_transport_options, app.conf.visibility_timeout) above the longest "
                "countdown/ETA you use, on every app sharing the broker (the shortest wins); or "
                "schedule far-future work with beat or a database instead of ETAs.",
                where=(source.origin,),
            )
        bound, task = longest_runtime(source)
        if bound is not None and bound > vt:
            yield finding(
                "VISIBILITY_TIMEOUT_BELOW_TIME_LIMIT",
                Level.WARNING,
                f"visibility_timeout {fmt_seconds(vt)} is shorter than the longest task time limit "
                f"({fmt_seconds(bound)})",
                f"{task} may run {fmt_seconds(bound)}. A message stays unacknowledged while it is "
                "prefetched behind such a task (and while an acks_late task runs); after "
                f"{fmt_seconds(vt)} it is restored and runs a second time on another worker.",
                "Raise broker_transport_options['visibility_timeout'] above the longest time limit "
                "plus the time a prefetched task may wait (or set worker_prefetch_multiplier = 1).",
                where=(source.origin,),
            )


def _queue_consumer_timeout(audit: Audit, queue: str | None) -> tuple[float | None, str | None]:
    for bq in audit.broker_queues:
        if bq.name != queue:
            continue
        if seconds(bq.arguments.get("x-consumer-timeout")) is not None:
            return float(bq.arguments["x-consumer-timeout"]) / 1000, "queue argument x-consumer-timeout"
        if seconds(bq.policy_definition.get("consumer-timeout")) is not None:
            return (
                float(bq.policy_definition["consumer-timeout"]) / 1000,
                f"policy {bq.policy or '?'} consumer-timeout",
            )
    return audit.consumer_timeout, audit.consumer_timeout_source or "broker default"


def check_consumer_timeout(audit: Audit) -> Iterator[Finding]:
    if audit.broker_kind != "rabbitmq":
        return
    by_queue: dict[str | None, list[EtaWait]] = {}
    for eta in audit.etas:
        if eta.location == "worker":
            by_queue.setdefault(eta.queue, []).append(eta)
    for queue, etas in sorted(by_queue.items(), key=lambda kv: kv[0] or ""):
        timeout, origin = _queue_consumer_timeout(audit, queue)
        longest = _longest_eta(etas)
        if timeout is None or longest is None or longest.held_for <= timeout:
            continue
        yield finding(
            "CONSUMER_TIMEOUT_BELOW_ETA",
            Level.ERROR,
            f"RabbitMQ consumer_timeout {fmt_seconds(timeout)} ({origin}) is shorter than the "
            f"longest ETA held by a worker ({fmt_seconds(round(longest.held_for))})",
            f"{_eta_label(longest)} from queue {queue or '?'} is held unacknowledged in the "
            "worker's memory until it is due. When the delivery has been unacked for "
            f"{fmt_seconds(timeout)} RabbitMQ closes the channel (PRECONDITION_FAILED): the "
            "worker reconnects and every message it held on that channel is redelivered; "
            "running acks_late tasks run twice.",
            "Raise consumer_timeout above the longest countdown (rabbitmq.conf consumer_timeout, "
            "or the x-consumer-timeout queue argument / consumer-timeout policy on 3.12+), or use "
            "quorum queues with native delayed delivery on a topic exchange so ETAs wait in the "
            "broker.",
            where=(f"queue {queue}" if queue else "broker",),
        )
    timeouts = [
        t
        for t in [audit.consumer_timeout]
        + [_queue_consumer_timeout(audit, q.name)[0] for q in audit.broker_queues]
        if t is not None
    ]
    if not timeouts:
        return
    shortest = min(timeouts)
    for source in audit.sources:
        late = acks_late_tasks(source)
        if late == []:
            continue
        bound, task = longest_runtime(source)
        if bound is not None and bound > shortest:
            yield finding(
                "CONSUMER_TIMEOUT_BELOW_TIME_LIMIT",
                Level.WARNING,
                f"RabbitMQ consumer_timeout {fmt_seconds(shortest)} is shorter than the longest "
                f"acks_late task time limit ({fmt_seconds(bound)})",
                f"{task} acks late and may run {fmt_seconds(bound)}; its delivery stays unacked "
                "meanwhile, and past consumer_timeout RabbitMQ closes the channel and redelivers "
                "everything the worker holds.",
                "Raise consumer_timeout (or x-consumer-timeout on the queue) above the longest "
                "acks_late task's time limit.",
                where=(source.origin,),
            )


def check_delayed_delivery_exchange(audit: Audit) -> Iterator[Finding]:
    if audit.broker_kind not in ("rabbitmq", None):
        return
    origins = sorted({d.origin for d in audit.queue_defs})
    for origin in origins:
        source = next((s for s in audit.sources if s.origin == origin), None)
        if source is not None and source.get("worker_detect_quorum_queues") is False:
            continue
        defs = [d for d in audit.queue_defs if d.origin == origin]
        quorum = [d for d in defs if d.queue_type == "quorum"]
        direct = sorted({d.name for d in quorum if (d.exchange_type or "direct") == "direct"})
        if not quorum or not direct:
            continue
        yield finding(
            "DELAYED_DELIVERY_DIRECT_EXCHANGE",
            Level.WARNING,
            "native delayed delivery does not apply to quorum queues bound to a direct exchange",
            f"Quorum queue(s) {listed(direct)} are bound to direct exchanges. Celery 5.5+ binds "
            "its celery_delayed_* exchanges only to non-direct exchanges (it skips direct ones "
            "with a warning), so countdown/ETA tasks for these queues are held unacknowledged "
            "in worker memory: they count against the now static prefetch and hit RabbitMQ's "
            "consumer_timeout.",
            "Declare these queues on a topic exchange (task_default_exchange_type = 'topic', "
            "Exchange(..., type='topic')) so ETAs wait in the broker.",
            where=(origin,),
        )


# --------------------------------------------------------------------------------------------
# serialization, results, publishing
def check_pickle(audit: Audit) -> Iterator[Finding]:
    for source in audit.sources:
        hits = []
        for key in ("accept_content", "result_accept_content"):
            value = source.get(key)
            # A worker's conf reply may carry a set as its repr string.
            items = {str(v) for v in value} if isinstance(value, (list, tuple, set, frozenset)) else set()
            if PICKLE & items or (isinstance(value, str) and any(p in value for p in PICKLE)):
                hits.append(key)
        for key in ("task_serializer", "result_serializer", "event_serializer"):
            if str(source.get(key)) in PICKLE:
                hits.append(key)
        if hits:
            yield finding(
                "PICKLE_ACCEPTED",
                Level.ERROR,
                "pickle is accepted or used (" + ", ".join(hits) + ")",
                "A worker that accepts pickle runs whatever code a message tells it to: anyone "
                "who can write to the broker (or the result backend) can execute code on every "
                "worker. Pickled messages also break when the classes they reference change "
                "during a deploy.",
                "Use JSON (or msgpack): task_serializer = result_serializer = 'json', "
                "accept_content = ['json'], result_accept_content = ['json']; pass ids instead "
                "of objects.",
                where=(source.origin,),
            )


def check_result_backend(audit: Audit) -> Iterator[Finding]:
    for source in audit.sources:
        backend = source.get("result_backend")
        scheme = backend_scheme(backend)
        if scheme in {"rpc", "amqp"}:
            yield finding(
                "RPC_RESULT_BACKEND",
                Level.WARNING,
                f"results go to the {scheme}:// backend",
                "The RPC backend sends each result as a message to the process that sent the "
                "task; nothing is stored. When that process restarts (a deploy) the results and "
                "states of its in-flight tasks are gone, and other processes cannot read them.",
                "Use a storing backend (redis://, a database) for work whose outcome must survive "
                "restarts, or ignore results you never read (task_ignore_result = True).",
                where=(source.origin,),
            )


def check_confirm_publish(audit: Audit) -> Iterator[Finding]:
    if audit.broker_kind != "rabbitmq":
        return
    for source in audit.sources:
        if not truthy(source.transport_options.get("confirm_publish")):
            yield finding(
                "CONFIRM_PUBLISH_OFF",
                Level.WARNING,
                "broker_transport_options.confirm_publish is off on RabbitMQ",
                "Without publisher confirms, apply_async returns before RabbitMQ has the message: "
                "if the connection drops or the broker restarts or fails over (a broker deploy), "
                "the task silently never exists.",
                "Set broker_transport_options = {'confirm_publish': True} (required for quorum "
                "queues by Celery's docs).",
                where=(source.origin,),
            )


# --------------------------------------------------------------------------------------------
# worker behaviour
def check_prefetch(audit: Audit) -> Iterator[Finding]:
    for source in audit.sources:
        multiplier = seconds(source.get("worker_prefetch_multiplier"))
        if multiplier is None or multiplier <= 1 or truthy(source.get("worker_disable_prefetch")):
            continue
        bound, task = longest_runtime(source)
        if bound is None or bound < LONG_TASK:
            continue
        yield finding(
            "PREFETCH_WITH_LONG_TASKS",
            Level.WARNING,
            f"worker_prefetch_multiplier = {multiplier:g} with tasks that run up to {fmt_seconds(bound)}",
            f"Each pool process reserves {multiplier:g} messages. Behind a long task ({task}) the "
            "reserved ones wait while other workers idle, a drain has to wait for all of them, "
            "and on Redis/SQS they can outlive the visibility timeout and run twice.",
            "Set worker_prefetch_multiplier = 1 for workers of long tasks (with acks_late, "
            "reserve one message per process), or route long tasks to their own queue and workers.",
            where=(source.origin,),
        )


def _eta_counts(audit: Audit) -> dict[str, int]:
    counts: dict[str, int] = {}
    for eta in audit.etas:
        key = eta.worker or "broker"
        counts[key] = counts.get(key, 0) + 1
    return counts


def check_eta_limit(audit: Audit) -> Iterator[Finding]:
    counts = _eta_counts(audit)
    most = max(counts.values(), default=0)
    if most < MANY_ETA_TASKS:
        return
    for source in audit.sources:
        if source.get("worker_eta_task_limit") is not None:
            continue
        supported = "worker_eta_task_limit" in source.settings
        yield finding(
            "NO_ETA_TASK_LIMIT",
            Level.WARNING,
            f"no worker_eta_task_limit while a worker holds {most} ETA tasks",
            "Workers fetch ETA/countdown tasks at once and keep them in memory until due, "
            "without bound: a queue full of ETAs makes workers grow until the OOM killer ends "
            "them, their messages go to the next worker, which dies the same way (celery#9849).",
            "Set worker_eta_task_limit (Celery 5.6+) to a number of ETA tasks a worker may hold"
            + ("" if supported else "; this Celery version lacks it, so upgrade")
            + ", or schedule far-future work elsewhere (beat, a database).",
            where=(source.origin,),
        )


def check_soft_shutdown(audit: Audit) -> Iterator[Finding]:
    if audit.broker_kind not in DEFAULT_VISIBILITY_TIMEOUT or not audit.etas:
        return
    for source in audit.sources:
        supported = "worker_soft_shutdown_timeout" in source.settings
        timeout = seconds(source.get("worker_soft_shutdown_timeout")) or 0.0
        on_idle = truthy(source.get("worker_enable_soft_shutdown_on_idle"))
        if supported and timeout > 0 and on_idle:
            continue
        missing = []
        if timeout <= 0:
            missing.append("worker_soft_shutdown_timeout is 0")
        if not on_idle:
            missing.append("worker_enable_soft_shutdown_on_idle is off")
        yield finding(
            "SOFT_SHUTDOWN_OFF_WITH_ETA",
            Level.WARNING,
            f"{len(audit.etas)} ETA task(s) wait on {audit.broker_kind} and soft shutdown is not set up ("
            + "; ".join(missing)
            + ")",
            "On Redis/SQS, ETA tasks a worker holds are only unacknowledged entries the worker "
            "must restore when it stops. A cold shutdown (SIGQUIT, the process manager's timeout) "
            "of an idle worker skips the soft shutdown and the ETA tasks it held can be lost "
            "(celery/kombu#533, celery#1810) or come back only after the visibility timeout.",
            "Set worker_soft_shutdown_timeout (e.g. 10-60 s, shorter than the stop timeout) and "
            "worker_enable_soft_shutdown_on_idle = True (Celery 5.5+)"
            + ("" if supported else "; this Celery version lacks them, so upgrade")
            + ".",
            where=(source.origin,),
        )


def check_time_limits(audit: Audit) -> Iterator[Finding]:
    for source in audit.sources:
        if seconds(source.get("task_time_limit")) or seconds(source.get("task_soft_time_limit")):
            tasks_unbounded: list[str] = []
        else:
            tasks = user_tasks(source)
            tasks_unbounded = [t.name for t in tasks if t.runtime_bound is None] if tasks else ["*"]
        if not tasks_unbounded:
            continue
        which = "no task" if tasks_unbounded == ["*"] else listed(tasks_unbounded)
        yield finding(
            "NO_TIME_LIMIT",
            Level.WARNING,
            "tasks without a time limit",
            f"{'No task has' if tasks_unbounded == ['*'] else which + ' have no'} time limit. A hung "
            "task holds its pool process forever: a warm shutdown waits for it until the process "
            "manager SIGKILLs the worker (losing early-acked tasks), a drain never finishes, and "
            "no stop timeout or visibility timeout can be sized safely.",
            "Set task_time_limit (and task_soft_time_limit a little below it) globally, and "
            "per task where some legitimately run longer.",
            where=(source.origin,),
        )


# --------------------------------------------------------------------------------------------
# drift between the code and what runs
def _setting(source: ConfigSource, dotted: str) -> Any:
    head, _, sub = dotted.partition(".")
    value = source.get(head)
    if sub:
        return value.get(sub) if isinstance(value, Mapping) else None
    return value


def _normal(key: str, value: Any) -> Any:
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [str(v) for v in value]
        return sorted(items) if key.endswith("accept_content") else items
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and key.startswith("broker_transport_options."):
        number = seconds(value)
        return int(number) if number is not None and number.is_integer() else value
    return value


def check_drift(audit: Audit) -> Iterator[Finding]:
    reference = audit.app or (audit.workers[0] if len(audit.workers) > 1 else None)
    if reference is None:
        return
    others = [w for w in audit.workers if w is not reference]
    for key in DRIFT_KEYS:
        expected = _normal(key, _setting(reference, key))
        differing: dict[str, list[str]] = {}
        for worker in others:
            value = _normal(key, _setting(worker, key))
            if value != expected:
                differing.setdefault(repr(value), []).append(worker.origin)
        if not differing:
            continue
        drifted = "; ".join(f"{', '.join(origins)}: {value}" for value, origins in differing.items())
        yield finding(
            "SETTING_DRIFT",
            Level.WARNING,
            f"{key} differs: {reference.origin} has {expected!r}; {drifted}",
            "What runs is not what the code says (an environment variable, an old release, a "
            "different settings module). Every other finding is only as good as the settings it "
            "was computed from, and a mixed fleet acknowledges, retries and times out "
            "differently depending on which worker gets the task.",
            "Make every worker load the same configuration (restart the stragglers, check their "
            "environment), then run doctor again.",
            where=tuple(sorted({o for origins in differing.values() for o in origins})),
        )


# --------------------------------------------------------------------------------------------
# process managers
def _pm_where(entry: ProcessManagerEntry) -> str:
    return f"{entry.kind} {entry.name} ({entry.path})"


def check_process_managers(audit: Audit) -> Iterator[Finding]:
    bound, task = longest_runtime_all(audit)
    for entry in audit.process_managers:
        where = (_pm_where(entry),)
        if entry.stop_timeout is not None and bound is not None and entry.stop_timeout < bound:
            setting = entry.stop_timeout_setting or "the stop timeout"
            default = " (the default)" if entry.stop_timeout_default else ""
            yield finding(
                "STOP_TIMEOUT_BELOW_TASK_TIME",
                Level.ERROR,
                f"{entry.kind} stops {entry.name} after {fmt_seconds(entry.stop_timeout)}{default}, "
                f"but a task may run {fmt_seconds(bound)}",
                f"{setting}{default} gives the worker {fmt_seconds(entry.stop_timeout)} to finish "
                f"after the stop signal; {task} may run {fmt_seconds(bound)}. The warm shutdown is "
                "cut short by SIGKILL: early-acked running tasks are lost, acks_late ones run "
                "again, and (Redis) everything the worker held waits for the visibility timeout.",
                _stop_timeout_fix(entry, bound),
                where=where,
                file=entry.path,
                line=entry.line,
            )
        if entry.signals_group:
            yield finding(
                "PROCESS_GROUP_SIGNAL",
                Level.ERROR,
                f"{entry.kind} sends the stop signal to the whole process group of {entry.name} "
                f"({entry.group_setting})",
                "The pool's child processes receive the signal too and die in the middle of their "
                "tasks instead of letting the main process run a warm shutdown (celery#2700): "
                "running tasks are lost or re-run.",
                _GROUP_FIX.get(entry.kind, _GROUP_FIX["systemd"]),
                where=where,
                file=entry.path,
                line=entry.line,
            )
        signal = (entry.stop_signal or "TERM").upper().removeprefix("SIG")
        if signal == "KILL":
            yield finding(
                "SIGKILL_STOP_SIGNAL",
                Level.ERROR,
                f"{entry.kind} stops {entry.name} with SIGKILL",
                "SIGKILL cannot be handled: no warm shutdown, running early-acked tasks are lost, "
                "reserved and ETA tasks are not returned (Redis keeps them until the visibility "
                "timeout).",
                f"Stop with SIGTERM ({_SIGNAL_SETTING.get(entry.kind, 'the default stop signal')}) "
                "and give it a stop timeout longer than the longest task.",
                where=where,
                file=entry.path,
                line=entry.line,
            )
        elif signal == "QUIT" or (signal == "TERM" and (entry.remap_sigterm or "").upper().endswith("QUIT")):
            how = "SIGQUIT" if signal == "QUIT" else "SIGTERM with REMAP_SIGTERM=SIGQUIT"
            yield finding(
                "COLD_STOP_SIGNAL",
                Level.WARNING,
                f"{entry.kind} stops {entry.name} with a cold shutdown ({how})",
                "A cold shutdown terminates running tasks (after worker_soft_shutdown_timeout, if "
                "set): early-acked ones are lost (their state set to RETRY), acks_late ones are "
                "redelivered and run again.",
                "Use SIGTERM for a warm shutdown; if you rely on a cold shutdown, set "
                "worker_soft_shutdown_timeout so tasks get time to finish, and use acks_late.",
                where=where,
                file=entry.path,
                line=entry.line,
            )
        if entry.shell_wrapped:
            yield finding(
                "SHELL_WRAPPED_WORKER",
                Level.WARNING,
                f"{entry.name} runs the worker under a shell (sh -c) without exec",
                "Kubernetes sends SIGTERM to the container's PID 1, the shell, which does not pass "
                "it on: the worker never starts a warm shutdown and is SIGKILLed when the grace "
                "period ends.",
                "Start the worker with exec (sh -c 'exec celery ... worker') or as the command "
                "itself, so it is PID 1 and receives SIGTERM.",
                where=where,
                file=entry.path,
                line=entry.line,
            )


_GROUP_FIX = {
    "supervisor": "Set stopasgroup = false (killasgroup = true is fine: it only applies to the final "
    "SIGKILL, and cleans up orphaned pool processes).",
    "systemd": "Set KillMode=mixed in [Service]: SIGTERM goes to the main process only, SIGKILL to "
    "the rest of the group only when TimeoutStopSec expires.",
}
_SIGNAL_SETTING = {
    "supervisor": "stopsignal = TERM",
    "systemd": "KillSignal=SIGTERM",
    "kubernetes": "remove lifecycle.stopSignal or set it to SIGTERM",
}


def _stop_timeout_fix(entry: ProcessManagerEntry, bound: float) -> str:
    need = int(bound) + 30
    if entry.kind == "supervisor":
        return f"Set stopwaitsecs = {need} (the longest time limit plus a margin) in [{entry.name}]."
    if entry.kind == "systemd":
        return f"Set TimeoutStopSec = {need} in [Service] of {entry.name}."
    return (
        f"Set terminationGracePeriodSeconds to at least {need} plus the preStop time, or shorten "
        "the longest task's time limit."
    )


# --------------------------------------------------------------------------------------------
CHECKS: tuple[Check, ...] = (
    check_acks,
    check_visibility_timeout,
    check_consumer_timeout,
    check_delayed_delivery_exchange,
    check_pickle,
    check_prefetch,
    check_eta_limit,
    check_soft_shutdown,
    check_time_limits,
    check_result_backend,
    check_confirm_publish,
    check_drift,
    check_process_managers,
)


def merge(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per distinct problem, naming every place it was found; worst first."""
    merged: dict[tuple[Any, ...], Finding] = {}
    for f in findings:
        key = (f.rule, f.level, f.message, f.why, f.hint, f.file, f.line)
        if key in merged:
            old = merged[key]
            merged[key] = replace(old, where=old.where + tuple(w for w in f.where if w not in old.where))
        else:
            merged[key] = f
    return sorted(merged.values(), key=lambda f: (-f.level.rank, f.rule, f.where))


def run_checks(audit: Audit, checks: Sequence[Check] = CHECKS) -> list[Finding]:
    """Every finding for ``audit``, merged and sorted worst first."""
    return merge(f for check in checks for f in check(audit))


def fails(findings: Iterable[Finding], fail_on: str) -> bool:
    """True when a finding reaches the ``--fail-on`` level (``error``, ``warning``, ``info``, ``never``)."""
    return bool(failing(findings, fail_on))
