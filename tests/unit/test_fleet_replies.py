"""The workers' remote-control replies parsed into typed values (deploykit.fleet.replies)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from deploykit.fleet.base import Replies
from deploykit.fleet.replies import (
    HELD_COMMANDS,
    WORKER_COMMANDS,
    HeldTask,
    acknowledged,
    celery_version,
    consumed_queues,
    held_tasks,
    parse_worker,
    refused,
    registered_names,
    worker_pid,
)


def _replies(node: str = "w1@h", **by_command: object) -> Replies:
    return Replies({command: {node: reply} for command, reply in by_command.items()})


def test_worker_commands_read_the_held_ones_too():
    assert list(WORKER_COMMANDS) == ["stats", "active_queues", "active", "reserved", "scheduled", "report"]
    assert set(HELD_COMMANDS) <= set(WORKER_COMMANDS)


@pytest.mark.parametrize(
    ("stats", "pid"),
    [({"pid": 42}, 42), ({"pid": "42"}, None), ({"pid": True}, None), (None, None), (["pid"], None)],
)
def test_worker_pid_only_from_an_integer(stats: object, pid: int | None) -> None:
    assert worker_pid(stats) == pid


def test_consumed_queues_keep_task_queues_and_their_specs():
    reply = [
        {"name": "celery", "exchange": {"name": "celery", "type": "direct"}, "routing_key": "celery"},
        {"name": "w1@h.celery.pidbox"},
        {"name": None},
        "garbage",
    ]
    assert consumed_queues(reply) == {
        "celery": {
            "name": "celery",
            "exchange": {"name": "celery", "type": "direct"},
            "routing_key": "celery",
        }
    }
    assert consumed_queues(None) == {} and consumed_queues({"name": "x"}) == {}


def test_registered_names_drop_attributes_and_tell_no_reply_from_none():
    assert registered_names(["shop.send [rate_limit=10/m]", "shop.ping"]) == {"shop.send", "shop.ping"}
    assert registered_names([]) == set()
    assert registered_names(None) is None
    assert registered_names({"error": "x"}) is None


def test_celery_version_from_report():
    assert celery_version({"ok": "software -> celery:5.3.6 (emerald-rush) kombu:5.3.4"}) == "5.3.6"
    assert celery_version({"ok": "no version here"}) is None
    assert celery_version({"error": "x"}) is None and celery_version("celery:5.0") is None


def test_control_answers():
    assert acknowledged({"ok": "task events enabled"})
    assert acknowledged({"ok": "task events enabled"}, ok="task events enabled")
    assert not acknowledged({"ok": "already enabled"}, ok="task events enabled")
    assert not acknowledged({"ok": "x", "error": "y"}) and not acknowledged(None)
    assert refused({"error": "unknown command"}) and not refused({"ok": "x"}) and not refused("error")


def test_held_tasks_match_their_queue_through_the_worker_declarations():
    declared = [{"name": "emails", "exchange": {"name": "mail"}, "routing_key": "send"}]
    request = {
        "id": "a",
        "type": "shop.send",
        "name": "shadow",
        "args": [1, "x"],
        "kwargs": {"k": 1},
        "delivery_info": {"exchange": "mail", "routing_key": "send", "priority": 3},
        "acknowledged": True,
    }
    delayed = {
        "id": "b",
        "type": "shop.later",
        "args": "(2,)",
        "delivery_info": {"exchange": "x", "routing_key": "1.0.1.emails"},
    }
    replies = Replies(
        {
            "active_queues": {"w1@h": declared},
            "active": {"w1@h": [request]},
            "reserved": {"w1@h": None},
            "scheduled": {"w1@h": [{"eta": "2026-11-21T12:30:00+00:00", "request": delayed}, "garbage"]},
        }
    )
    assert held_tasks(replies, "w1@h") == [
        HeldTask("a", "shop.send", "w1@h", "active", "emails", None, "(1, 'x')", "{'k': 1}", 3, True),
        HeldTask(
            "b",
            "shop.later",
            "w1@h",
            "scheduled",
            "emails",  # native delayed delivery's '<bits>.<routing key>' (kombu)
            datetime(2026, 11, 21, 12, 30, tzinfo=timezone.utc),
            "(2,)",
        ),
    ]
    assert held_tasks(replies, "w2@h") == []


def test_malformed_replies_are_unknown_not_a_crash():
    """A worker (or anything answering on its mailbox) may send any JSON: nothing raises."""
    replies = _replies(
        stats={"pid": "x", "prefetch_count": "4", "uptime": "long", "pool": ["prefork"]},
        active_queues=["celery", {"name": "emails"}, 3],
        active={"not": "a list"},
        reserved=[None, 7],
        scheduled=[{"request": "x"}],
        report={"ok": 5},
    )
    worker = parse_worker("w1@h", replies)
    assert worker.queues == ("emails",)
    assert (worker.pid, worker.prefetch_count, worker.uptime, worker.pool, worker.concurrency) == (None,) * 5
    assert (worker.active, worker.reserved, worker.scheduled) == (None, 2, 1)
    assert worker.celery_version is None
    assert [(t.state, t.id, t.name) for t in worker.tasks] == [
        ("reserved", None, None),
        ("reserved", None, None),
        ("scheduled", None, None),
    ]


def test_a_worker_that_answered_nothing_is_partial_and_unknown():
    worker = parse_worker("w1@h", Replies({command: {} for command in WORKER_COMMANDS}, missing=("w1@h",)))
    assert worker.partial and worker.queues == () and worker.tasks == ()
    assert (worker.pid, worker.active, worker.reserved, worker.scheduled) == (None, None, None, None)
