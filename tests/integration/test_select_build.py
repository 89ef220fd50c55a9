"""``--build`` end to end on Redis: real workers of the stamped app on builds A and B, the real CLI."""

from __future__ import annotations

import pytest
import redis

from tests.orchestrate.live import active_queues, control, deploykit, result_json, send, wait_for

pytestmark = pytest.mark.integration

ADD = "tests.apps.stamped.add"


def test_drain_resume_and_shutdown_by_build(redis_url, start_workers):
    (a1,) = start_workers(
        redis_url,
        [("a1@dk", ("celery", "emails"))],
        app="tests.apps.stamped",
        env={"DEPLOYKIT_TEST_BUILD": "A"},
    )
    (b1,) = start_workers(
        redis_url, [("b1@dk", ("celery",))], app="tests.apps.stamped", env={"DEPLOYKIT_TEST_BUILD": "B"}
    )

    # a build nobody runs: exit 2, one line naming the live builds, nothing changed
    proc = deploykit(redis_url, "drain", "--build", "Z", "--build", "A")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "deploykit: error: no live worker runs build 'Z'; live builds: A (a1@dk); B (b1@dk)"
    ]
    assert active_queues(redis_url, "a1@dk") == ["celery", "emails"]

    proc = deploykit(redis_url, "drain", "--build", "A", "--timeout", "30s", "--json")
    doc = result_json(proc)
    assert proc.returncode == 0, proc.stderr
    assert doc["status"] == "drained" and doc["workers"] == ["a1@dk"]
    assert sorted((c["worker"], c["queue"]) for c in doc["cancelled"]) == [
        ("a1@dk", "celery"),
        ("a1@dk", "emails"),
    ]
    assert active_queues(redis_url, "a1@dk") == []
    assert active_queues(redis_url, "b1@dk") == ["celery"]

    # -w and --build intersect: b1 is not on build A
    proc = deploykit(redis_url, "resume", "--build", "A", "--worker", "b1", "--json")
    assert proc.returncode == 0 and result_json(proc)["status"] == "nothing-to-do", proc.stderr
    assert active_queues(redis_url, "a1@dk") == []
    proc = deploykit(redis_url, "resume", "--build", "A", "--json")
    doc = result_json(proc)
    assert proc.returncode == 0, proc.stderr
    assert sorted((r["worker"], r["queue"]) for r in doc["restored"]) == [
        ("a1@dk", "celery"),
        ("a1@dk", "emails"),
    ]
    assert active_queues(redis_url, "a1@dk") == ["celery", "emails"]

    # a1 holds an ETA task (only it consumes 'emails'); shutdown --build A stops a1 alone and
    # verifies the task is back in the broker
    client = redis.Redis.from_url(redis_url)
    send(redis_url, ADD, (1, 2), queue="emails", countdown=600)
    wait_for(lambda: client.hlen("unacked") == 1, timeout=15)
    wait_for(lambda: "] received" in a1.log(), timeout=15)
    proc = deploykit(redis_url, "shutdown", "--build", "A", "--timeout", "30s", "--json")
    doc = result_json(proc)
    assert proc.returncode == 0, proc.stderr
    assert doc["status"] == "done" and [w["worker"] for w in doc["workers"]] == ["a1@dk"]
    assert doc["held"] == 1 == doc["returned"] and doc["verified"] is True
    assert a1.wait(20) is not None
    assert client.hlen("unacked") == 0 and client.llen("emails") == 1
    assert b1.alive()
    assert list(control(redis_url).ping(destination=["b1@dk"], timeout=2)[0]) == ["b1@dk"]
