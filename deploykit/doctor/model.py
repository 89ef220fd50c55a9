"""The plain data ``doctor`` audits and the findings it reports.

An :class:`Audit` is gathered once (from the app, the workers, the broker and process-manager
files) and every check is a pure function of it, so checks are tested from tables of inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# The vocabulary every command shares; re-exported for the checks.
from deploykit.findings import Finding as Finding
from deploykit.findings import Level as Level


def finding(
    rule: str,
    level: Level,
    title: str,
    why: str,
    fix: str,
    where: Iterable[str] = (),
    file: str | None = None,
    line: int | None = None,
) -> Finding:
    """One risky setting: what it is (the message), why it loses or duplicates tasks, the fix.

    ``where`` names the configuration sources or files it was found in (``app``,
    ``worker w1@host``, a path); ``file``/``line`` point at a process-manager file's line.
    """
    return Finding(rule, level, None, title, fix, why=why, where=tuple(where), file=file, line=line)


@dataclass(frozen=True)
class TaskPolicy:
    """The delivery-relevant options of one task, as the app or a worker has them."""

    name: str
    acks_late: bool | None = None
    reject_on_worker_lost: bool | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None

    @property
    def runtime_bound(self) -> float | None:
        """The longest this task can run, when a limit bounds it."""
        return self.time_limit or self.soft_time_limit or None


@dataclass(frozen=True)
class ConfigSource:
    """The settings of one place that runs or sends tasks: the app's code, or one live worker."""

    #: ``app`` or ``worker <nodename>``.
    origin: str
    #: Effective values, Celery's defaults filled in (lower-case setting names).
    settings: Mapping[str, Any]
    #: Names of the settings that were set explicitly (not defaults).
    explicit: frozenset[str] = frozenset()
    #: Per-task options; empty when unknown.
    tasks: tuple[TaskPolicy, ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)

    @property
    def transport_options(self) -> Mapping[str, Any]:
        value = self.settings.get("broker_transport_options")
        return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class QueueDef:
    """A task queue's declaration as the app or a worker has it (exchange type, queue type)."""

    name: str
    exchange: str | None
    exchange_type: str | None
    queue_type: str | None
    origin: str


@dataclass(frozen=True)
class BrokerQueue:
    """What the broker says about a task queue (RabbitMQ: type, arguments, effective policy)."""

    name: str
    queue_type: str | None = None
    arguments: Mapping[str, Any] = field(default_factory=dict)
    policy: str | None = None
    policy_definition: Mapping[str, Any] = field(default_factory=dict)
    consumers: int | None = None


@dataclass(frozen=True)
class EtaWait:
    """An ETA/countdown task waiting right now, and how long it stays unacknowledged."""

    id: str | None
    name: str | None
    queue: str | None
    eta: datetime
    #: Seconds between its delivery (or now, when unknown) and its ETA: how long it stays unacked.
    held_for: float
    #: ``worker`` (held in a worker's timer) or ``broker-unacked`` (Redis unacked hash).
    location: str
    worker: str | None = None


@dataclass(frozen=True)
class ProcessManagerEntry:
    """One program that runs a Celery worker, read from a supervisor, systemd or Kubernetes file."""

    #: ``supervisor``, ``systemd`` or ``kubernetes``.
    kind: str
    path: str
    #: Program section, unit file name, or ``Deployment/name container``.
    name: str
    command: str | None
    #: Seconds the worker gets between the stop signal and SIGKILL (after any preStop hook).
    stop_timeout: float | None
    #: True when ``stop_timeout`` is the manager's default (the file does not set it).
    stop_timeout_default: bool = False
    #: The signal sent first (``TERM``, ``INT``, ``QUIT``, ``KILL``…), without the ``SIG`` prefix.
    stop_signal: str | None = "TERM"
    #: True when the stop signal goes to the whole process group, pool children included.
    signals_group: bool = False
    #: The setting that makes it so, as written (``stopasgroup=true``, ``KillMode=control-group``).
    group_setting: str | None = None
    #: Kubernetes: seconds of the preStop hook (``None`` when unknown), already subtracted.
    prestop_seconds: float | None = None
    prestop_unknown: bool = False
    #: ``REMAP_SIGTERM`` from the program's environment (``SIGQUIT`` makes SIGTERM a cold shutdown).
    remap_sigterm: str | None = None
    #: Kubernetes: the worker runs under ``sh -c`` without ``exec`` (SIGTERM may never reach it).
    shell_wrapped: bool = False
    line: int | None = None
    #: The raw stop-timeout setting as written, for messages.
    stop_timeout_setting: str | None = None


@dataclass(frozen=True)
class Audit:
    """Everything ``doctor`` looks at, gathered once."""

    #: ``redis``, ``rabbitmq``, ``sqs``, another kombu transport name, or ``None`` (offline).
    broker_kind: str | None
    app: ConfigSource | None = None
    workers: tuple[ConfigSource, ...] = ()
    queue_defs: tuple[QueueDef, ...] = ()
    broker_queues: tuple[BrokerQueue, ...] = ()
    #: RabbitMQ's global ``consumer_timeout`` in seconds (``None``: unknown or disabled).
    consumer_timeout: float | None = None
    consumer_timeout_source: str | None = None
    #: Redis/SQS ``visibility_timeout`` the broker module resolved (``None``: unknown).
    visibility_timeout: float | None = None
    etas: tuple[EtaWait, ...] = ()
    #: ETA messages waiting in RabbitMQ's native delayed-delivery queues (counted, not held).
    delayed_messages: int | None = None
    process_managers: tuple[ProcessManagerEntry, ...] = ()
    #: Workers that answered the ping but not the ``conf`` request.
    workers_without_conf: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    #: False with ``--offline``: the broker and the workers were not asked.
    online: bool = True

    @property
    def sources(self) -> tuple[ConfigSource, ...]:
        return ((self.app,) if self.app else ()) + self.workers
