"""Each doctor check from a table of audits: (description, audit, expected finding IDs).

Risky configurations must produce their finding; safe ones must not. ``expected`` lists the IDs
at warning level or above, plus any info IDs named explicitly in ``info``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from deploykit.doctor.checks import fails, run_checks
from deploykit.doctor.gather import _defaults, parse_registered, source_from_worker
from deploykit.doctor.model import (
    Audit,
    BrokerQueue,
    ConfigSource,
    EtaWait,
    Level,
    ProcessManagerEntry,
    QueueDef,
    TaskPolicy,
)
from deploykit.findings import canonical_rule_id

NOW = datetime(2026, 11, 21, 5, 0, tzinfo=timezone.utc)
SAFE: dict[str, Any] = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "task_time_limit": 300,
    "task_soft_time_limit": 280,
    "worker_prefetch_multiplier": 1,
    "worker_soft_shutdown_timeout": 30,
    "worker_enable_soft_shutdown_on_idle": True,
    "worker_eta_task_limit": 1000,
    "broker_transport_options": {"visibility_timeout": 7200, "confirm_publish": True},
    "result_backend": "redis://localhost/1",
}


def src(origin: str = "app", tasks: tuple[TaskPolicy, ...] = (), **settings: Any) -> ConfigSource:
    merged = {**_defaults(), **SAFE, **settings}
    return ConfigSource(origin, merged, frozenset(settings), tasks)


def eta(
    seconds: float, *, queue: str = "celery", worker: str | None = "w1@h", n: int = 1
) -> tuple[EtaWait, ...]:
    return tuple(
        EtaWait(f"id{i}", "proj.remind", queue, NOW + timedelta(seconds=seconds), seconds, "worker", worker)
        for i in range(n)
    )


def pm(**fields: Any) -> ProcessManagerEntry:
    base: dict[str, Any] = {
        "kind": "supervisor",
        "path": "/etc/supervisor/conf.d/celery.conf",
        "name": "program:worker",
        "command": "celery -A proj worker",
        "stop_timeout": 600.0,
    }
    return ProcessManagerEntry(**{**base, **fields})


def audit(kind: str | None = "redis", **fields: Any) -> Audit:
    fields.setdefault("app", src())
    return Audit(broker_kind=kind, **fields)


CASES: list[tuple[str, Audit, set[str], set[str]]] = [
    ("safe redis config", audit(), set(), set()),
    ("safe rabbitmq config", audit("rabbitmq", consumer_timeout=1800.0), set(), set()),
    (
        "acks_late without reject_on_worker_lost",
        audit(app=src(task_reject_on_worker_lost=None)),
        {"ACKS_LATE_WITHOUT_REJECT"},
        set(),
    ),
    (
        "acks_late with retry_on_worker_lost (5.7) is protected",
        audit(app=src(task_reject_on_worker_lost=None, task_retry_on_worker_lost=True)),
        set(),
        set(),
    ),
    (
        "one task acks late without reject, the others ack early",
        audit(
            app=src(
                tasks=(
                    TaskPolicy("proj.a", acks_late=True, reject_on_worker_lost=None, time_limit=10),
                    TaskPolicy("proj.b", acks_late=False, time_limit=10),
                ),
                task_acks_late=False,
                task_reject_on_worker_lost=None,
            )
        ),
        {"ACKS_LATE_WITHOUT_REJECT"},
        set(),
    ),
    (
        "acks_late with reject: the redelivery trade-off is an info",
        audit(),
        set(),
        {"REJECT_ON_WORKER_LOST_REDELIVERY"},
    ),
    (
        "early acks are an info, not a failure",
        audit(app=src(task_acks_late=False, task_reject_on_worker_lost=None)),
        set(),
        {"ACKS_EARLY"},
    ),
    (
        "reject_on_worker_lost without acks_late has no effect",
        audit(app=src(task_acks_late=False)),
        set(),
        {"REJECT_WITHOUT_ACKS_LATE"},
    ),
    (
        "visibility timeout shorter than a waiting ETA",
        audit(
            app=src(broker_transport_options={"visibility_timeout": 60, "confirm_publish": True}),
            etas=eta(600),
        ),
        {"VISIBILITY_TIMEOUT_BELOW_ETA", "VISIBILITY_TIMEOUT_BELOW_TIME_LIMIT"},
        set(),
    ),
    ("visibility timeout longer than the ETA", audit(etas=eta(600)), set(), set()),
    (
        "default visibility timeout (1 h) below a 2 h countdown",
        audit(app=src(broker_transport_options={}), etas=eta(7200)),
        {"VISIBILITY_TIMEOUT_BELOW_ETA"},
        set(),
    ),
    (
        "SQS default visibility timeout (30 min) below the time limit",
        audit("sqs", app=src(broker_transport_options={}, task_time_limit=3600)),
        {"VISIBILITY_TIMEOUT_BELOW_TIME_LIMIT"},
        set(),
    ),
    (
        "visibility timeout does not apply on RabbitMQ",
        audit(
            "rabbitmq",
            app=src(broker_transport_options={"visibility_timeout": 1, "confirm_publish": True}),
            etas=eta(600),
        ),
        set(),
        set(),
    ),
    (
        "consumer_timeout shorter than an ETA held by a worker",
        audit("rabbitmq", consumer_timeout=1800.0, etas=eta(7200)),
        {"CONSUMER_TIMEOUT_BELOW_ETA"},
        set(),
    ),
    (
        "per-queue x-consumer-timeout raised above the ETA",
        audit(
            "rabbitmq",
            consumer_timeout=1800.0,
            etas=eta(7200),
            broker_queues=(BrokerQueue("celery", arguments={"x-consumer-timeout": 86_400_000}),),
        ),
        set(),
        set(),
    ),
    (
        "policy consumer-timeout below the ETA",
        audit(
            "rabbitmq",
            consumer_timeout=None,
            etas=eta(600),
            broker_queues=(
                BrokerQueue("celery", policy="short", policy_definition={"consumer-timeout": 60_000}),
            ),
        ),
        # the policy's 60 s is also shorter than the 300 s acks_late time limit
        {"CONSUMER_TIMEOUT_BELOW_ETA", "CONSUMER_TIMEOUT_BELOW_TIME_LIMIT"},
        set(),
    ),
    (
        "acks_late task longer than consumer_timeout",
        audit("rabbitmq", consumer_timeout=1800.0, app=src(task_time_limit=7200)),
        {"CONSUMER_TIMEOUT_BELOW_TIME_LIMIT"},
        set(),
    ),
    (
        "quorum queue on a direct exchange: no native delayed delivery",
        audit("rabbitmq", queue_defs=(QueueDef("celery", "celery", "direct", "quorum", "app"),)),
        {"DELAYED_DELIVERY_DIRECT_EXCHANGE"},
        set(),
    ),
    (
        "quorum queue on a topic exchange is fine",
        audit("rabbitmq", queue_defs=(QueueDef("celery", "celery", "topic", "quorum", "app"),)),
        set(),
        set(),
    ),
    ("pickle accepted", audit(app=src(accept_content=["json", "pickle"])), {"PICKLE_ACCEPTED"}, set()),
    (
        "pickle as the result serializer",
        audit(app=src(result_serializer="pickle")),
        {"PICKLE_ACCEPTED"},
        set(),
    ),
    (
        "pickle in a worker's conf reply (a set, repr'd)",
        audit(app=None, workers=(src("worker w1@h", accept_content="{'pickle', 'json'}"),)),
        {"PICKLE_ACCEPTED"},
        set(),
    ),
    (
        "prefetch 4 with 10-minute tasks",
        audit(app=src(worker_prefetch_multiplier=4, task_time_limit=600)),
        {"PREFETCH_WITH_LONG_TASKS"},
        set(),
    ),
    (
        "prefetch 4 with short tasks",
        audit(app=src(worker_prefetch_multiplier=4, task_time_limit=10)),
        set(),
        set(),
    ),
    (
        "prefetch disabled (5.6 worker_disable_prefetch)",
        audit(app=src(worker_prefetch_multiplier=4, task_time_limit=600, worker_disable_prefetch=True)),
        set(),
        set(),
    ),
    (
        "many ETA tasks without worker_eta_task_limit",
        audit(app=src(worker_eta_task_limit=None), etas=eta(60, n=150)),
        {"NO_ETA_TASK_LIMIT"},
        set(),
    ),
    (
        "a few ETA tasks without the limit",
        audit(app=src(worker_eta_task_limit=None), etas=eta(60, n=3)),
        set(),
        set(),
    ),
    (
        "ETA tasks on Redis without soft shutdown",
        audit(app=src(worker_soft_shutdown_timeout=0.0), etas=eta(60)),
        {"SOFT_SHUTDOWN_OFF_WITH_ETA"},
        set(),
    ),
    (
        "soft shutdown without on_idle",
        audit(app=src(worker_enable_soft_shutdown_on_idle=False), etas=eta(60)),
        {"SOFT_SHUTDOWN_OFF_WITH_ETA"},
        set(),
    ),
    (
        "no ETA tasks: soft shutdown does not matter",
        audit(app=src(worker_soft_shutdown_timeout=0.0)),
        set(),
        set(),
    ),
    (
        "no time limits",
        audit(app=src(task_time_limit=None, task_soft_time_limit=None)),
        {"NO_TIME_LIMIT"},
        set(),
    ),
    (
        "per-task limits cover every task",
        audit(
            app=src(
                tasks=(
                    TaskPolicy("proj.a", True, True, time_limit=30),
                    TaskPolicy("proj.b", True, True, soft_time_limit=5),
                ),
                task_time_limit=None,
                task_soft_time_limit=None,
            )
        ),
        set(),
        set(),
    ),
    ("rpc result backend", audit(app=src(result_backend="rpc://")), {"RPC_RESULT_BACKEND"}, set()),
    (
        "confirm_publish off on RabbitMQ",
        audit("rabbitmq", app=src(broker_transport_options={})),
        {"CONFIRM_PUBLISH_OFF"},
        set(),
    ),
    (
        "confirm_publish does not apply to Redis",
        audit(app=src(broker_transport_options={"visibility_timeout": 7200})),
        set(),
        set(),
    ),
    (
        "a worker runs with different settings than the code",
        audit(workers=(src("worker w1@h"), src("worker w2@h", task_acks_late=False))),
        {"SETTING_DRIFT"},
        set(),
    ),
    (
        "two workers disagree (no app)",
        audit(app=None, workers=(src("worker w1@h"), src("worker w2@h", worker_prefetch_multiplier=8))),
        {"SETTING_DRIFT", "PREFETCH_WITH_LONG_TASKS"},
        set(),
    ),
    (
        "a visibility timeout given as a string in one place is not drift",
        audit(
            workers=(
                src(
                    "worker w1@h",
                    broker_transport_options={"visibility_timeout": "7200", "confirm_publish": True},
                ),
            )
        ),
        set(),
        set(),
    ),
    (
        "supervisor default stopwaitsecs (10 s) with 5-minute tasks",
        audit(process_managers=(pm(stop_timeout=10.0, stop_timeout_default=True),)),
        {"STOP_TIMEOUT_BELOW_TASK_TIME"},
        set(),
    ),
    ("a long enough stop timeout", audit(process_managers=(pm(stop_timeout=600.0),)), set(), set()),
    (
        "stopasgroup",
        audit(process_managers=(pm(signals_group=True, group_setting="stopasgroup=true"),)),
        {"PROCESS_GROUP_SIGNAL"},
        set(),
    ),
    (
        "SIGKILL as the stop signal",
        audit(process_managers=(pm(stop_signal="KILL"),)),
        {"SIGKILL_STOP_SIGNAL"},
        set(),
    ),
    (
        "SIGQUIT: a cold shutdown",
        audit(process_managers=(pm(stop_signal="QUIT"),)),
        {"COLD_STOP_SIGNAL"},
        set(),
    ),
    (
        "REMAP_SIGTERM=SIGQUIT",
        audit(process_managers=(pm(remap_sigterm="SIGQUIT"),)),
        {"COLD_STOP_SIGNAL"},
        set(),
    ),
    (
        "a shell that swallows SIGTERM",
        audit(process_managers=(pm(kind="kubernetes", shell_wrapped=True),)),
        {"SHELL_WRAPPED_WORKER"},
        set(),
    ),
]


def _ids(found: list[Any], *, info: set[str]) -> set[str]:
    return {f.rule for f in found if f.level is not Level.INFO or f.rule in info}


@pytest.mark.parametrize(("audit_", "expected", "info"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_table(audit_: Audit, expected: set[str], info: set[str]) -> None:
    found = run_checks(audit_)
    assert _ids(found, info=info) == expected | info
    for finding in found:
        assert finding.rule == canonical_rule_id(finding.rule)  # UPPER_SNAKE, like the manifest rules
        slug = finding.rule.lower().replace("_", "-")
        assert finding.docs == f"https://deploykit.readthedocs.io/en/stable/rules/{slug}/"
        assert finding.why and finding.hint and finding.message


def test_identical_findings_from_many_workers_merge_into_one() -> None:
    risky = {"task_reject_on_worker_lost": None}
    found = run_checks(
        audit(app=src(**risky), workers=tuple(src(f"worker w{i}@h", **risky) for i in range(5)))
    )
    lost = [f for f in found if f.rule == "ACKS_LATE_WITHOUT_REJECT"]
    assert len(lost) == 1
    assert lost[0].where == ("app", *(f"worker w{i}@h" for i in range(5)))


def test_drift_names_the_setting_and_both_values() -> None:
    found = run_checks(
        audit(workers=(src("worker w2@h", task_acks_late=False, task_reject_on_worker_lost=None),))
    )
    drift = [f for f in found if f.rule == "SETTING_DRIFT"]
    assert any("task_acks_late" in f.message and "False" in f.message for f in drift)
    assert all(f.where == ("worker w2@h",) for f in drift)


def test_findings_are_sorted_worst_first_and_fail_on_levels() -> None:
    found = run_checks(audit(app=src(task_reject_on_worker_lost=None, result_backend="rpc://")))
    levels = [f.level.rank for f in found]
    assert levels == sorted(levels, reverse=True)
    assert fails(found, "error") and fails(found, "warning") and not fails(found, "never")
    only_warnings = run_checks(audit(app=src(result_backend="rpc://")))
    assert not fails(only_warnings, "error") and fails(only_warnings, "warning")


def test_worker_conf_reply_and_registered_attributes() -> None:
    worker = source_from_worker(
        "w1@h",
        {"task_acks_late": True, "CELERY_TASK_SERIALIZER": "json"},
        ["proj.a [acks_late=True reject_on_worker_lost=True time_limit=30]", "proj.b [acks_late=False]"],
    )
    assert worker.origin == "worker w1@h"
    assert worker.get("task_acks_late") is True
    assert worker.get("worker_prefetch_multiplier") == 4  # Celery's default filled in
    assert "task_serializer" in worker.explicit
    assert worker.tasks == (
        TaskPolicy("proj.a", True, True, 30.0, None),
        TaskPolicy("proj.b", False, None, None, None),
    )
    assert parse_registered(None) == ()


def test_fail_on_info() -> None:
    found = run_checks(audit(app=src(task_acks_late=False, task_reject_on_worker_lost=None)))
    assert {f.level for f in found} == {Level.INFO}
    assert fails(found, "info") and not fails(found, "warning")
