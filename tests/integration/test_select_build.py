"""``--build`` end to end on Redis: real workers of the stamped app on builds A and B, the real CLI."""

from __future__ import annotations

import os
import signal
import sys

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


def test_restart_counts_a_worker_back_only_on_the_expected_build(redis_url, start_workers, tmp_path):
    start_workers(
        redis_url, [("a1@dk", ("celery",))], app="tests.apps.stamped", env={"DEPLOYKIT_TEST_BUILD": "A"}
    )
    start_workers(
        redis_url, [("old@dk", ("celery",))], app="tests.apps.stamped", env={"DEPLOYKIT_TEST_BUILD": "O"}
    )

    def template(build: str) -> str:
        return (
            f"sh -c 'DEPLOYKIT_TEST_BUILD={build} DEPLOYKIT_TEST_BROKER={redis_url} exec {sys.executable} "
            "-m celery -A tests.apps.stamped worker -n {nodename} -Q {queues} -c 1 --without-mingle "
            f"--without-gossip -f {tmp_path}/{{name}}.log > /dev/null 2>&1 &'"
        )

    new_pids: list[int] = []
    try:
        # the new release (build B): a1 comes back on B, old@dk (build O) is not touched
        proc = deploykit(
            redis_url,
            "restart",
            "--build",
            "A",
            "--exec",
            template("B"),
            "--expect-build",
            "B",
            "--json",
            timeout=120,
        )
        doc = result_json(proc)
        assert proc.returncode == 0, proc.stderr
        assert doc["status"] == "done" and doc["restarted"] == ["a1@dk"]
        new_pids.append(doc["batches"][0]["restarts"][0]["new_pid"])

        # a deploy that did not roll out: the worker comes back on B where C was expected
        proc = deploykit(
            redis_url,
            "restart",
            "--build",
            "B",
            "--exec",
            template("B"),
            "--expect-build",
            "C",
            "--json",
            timeout=120,
        )
        doc = result_json(proc)
        new_pids.append(doc["batches"][0]["restarts"][0]["new_pid"])
        assert proc.returncode == 1, proc.stderr
        assert doc["status"] == "failed" and doc["restarted"] == []
        assert (
            "a1@dk came back on the wrong build: it runs build 'B', expected 'C'; it is not counted as back"
            in proc.stderr
        )
        workers = result_json(deploykit(redis_url, "workers", "--json"))["workers"]
        assert {w["hostname"]: w["build"] for w in workers} == {"a1@dk": "B", "old@dk": "O"}
    finally:
        for pid in new_pids:
            if pid:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        wait_for(
            lambda: not (control(redis_url).ping(destination=["a1@dk"], timeout=0.5) or []),
            timeout=30,
            interval=0.5,
        )
