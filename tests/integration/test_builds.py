"""``deploykit builds`` end to end on Redis: real workers of the stamped test app on builds A and B,
messages stamped by A, B and C (no worker) plus unstamped ones, waiting in a queue and held as ETA
tasks by the workers; the counts must match what was sent exactly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from deploykit.celery import install
from tests.integration.test_inspect_cli import deploykit
from tests.orchestrate.live import wait_for
from tests.output.shapes import validate

pytestmark = pytest.mark.integration

PARKED = "parked"  # no worker consumes it: what is sent there waits
HOUR = 3600


@pytest.fixture
def producers(redis_url: str) -> Iterator[dict[str | None, Any]]:
    from celery import Celery

    apps: dict[str | None, Any] = {}
    for build in ("A", "B", "C", None):
        app = Celery(f"producer-{build}", broker=redis_url, set_as_current=False)
        app.conf.broker_connection_retry_on_startup = True
        if build is not None:
            install(app, build=build, register=False)
        apps[build] = app
    yield apps
    for app in apps.values():
        app.close()


def _unacked(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.hlen("unacked"))
    finally:
        client.close()


def test_builds_counts_exactly_what_each_build_sent(redis_url, start_workers, producers):
    env = {"DEPLOYKIT_TEST_BUILD": "B"}
    start_workers(redis_url, [("a@dk", ("qa",))], app="tests.apps.stamped")
    start_workers(redis_url, [("b@dk", ("qb",))], app="tests.apps.stamped", env=env)

    def send(build: str | None, queue: str, number: int, **options: Any) -> None:
        for n in range(number):
            producers[build].send_task("tests.apps.stamped.add", (n, n), queue=queue, **options)

    # Waiting in a queue no worker consumes.
    send("A", PARKED, 3)
    send("B", PARKED, 2)
    send("C", PARKED, 4)  # build C: no worker runs it
    send(None, PARKED, 5)
    # Held as ETA tasks by each worker (in Redis' unacked hash, reported by the worker).
    send("A", "qa", 2, countdown=HOUR)
    send("C", "qa", 1, countdown=2 * HOUR)
    send(None, "qb", 2, countdown=HOUR)
    send("B", "qb", 1, countdown=3 * HOUR)
    wait_for(lambda: _unacked(redis_url) == 6, timeout=30)

    # Both workers registered their manifests when they started.
    def registered() -> bool:
        listed = deploykit("-b", redis_url, "manifest", "list", "--json")
        return listed.returncode == 0 and {e["build"] for e in json.loads(listed.stdout)["builds"]} == {
            "A",
            "B",
        }

    wait_for(registered, timeout=30)

    result = deploykit("builds", "--json", "-b", redis_url, "-Q", PARKED, "-Q", "qa", "-Q", "qb")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    validate(doc)
    rows = {row["build"] if row["kind"] == "build" else row["kind"]: row for row in doc["builds"]}
    assert set(rows) == {"A", "B", "C", "unstamped"}
    a, b, c, plain = rows["A"], rows["B"], rows["C"], rows["unstamped"]
    assert (a["state"], a["workers"], a["manifest"]) == ("active", ["a@dk"], True)
    assert (b["state"], b["workers"], b["manifest"]) == ("active", ["b@dk"], True)
    assert (c["state"], c["workers"], c["manifest"]) == ("draining", [], False)
    assert plain["state"] == "draining" and plain["workers"] == []
    assert a["messages"] == {
        "total": 5,
        "queues": {PARKED: 3},
        "unacked": 0,
        "held": {"a@dk": 2},
        "delayed": 0,
        "beat": 0,
    }
    assert b["messages"] == {
        "total": 3,
        "queues": {PARKED: 2},
        "unacked": 0,
        "held": {"b@dk": 1},
        "delayed": 0,
        "beat": 0,
    }
    assert c["messages"] == {
        "total": 5,
        "queues": {PARKED: 4},
        "unacked": 0,
        "held": {"a@dk": 1},
        "delayed": 0,
        "beat": 0,
    }
    assert plain["messages"] == {
        "total": 7,
        "queues": {PARKED: 5},
        "unacked": 0,
        "held": {"b@dk": 2},
        "delayed": 0,
        "beat": 0,
    }
    # The latest ETA of each build: C's is two hours out, B's three, A's one.
    assert a["latest_eta"] < c["latest_eta"] < b["latest_eta"]
    assert doc["complete"] is True and doc["read"] == 20 and doc["unread"] == []

    text = deploykit("builds", "-b", redis_url, "-Q", PARKED, "-Q", "qa", "-Q", "qb")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert [line for line in lines if line.lstrip().startswith("C ") and "draining" in line]
    assert [line for line in lines if "(unstamped)" in line and "draining" in line]


def test_a_build_whose_workers_are_gone_is_draining_then_drained(redis_url, start_workers, producers):
    (worker,) = start_workers(redis_url, [("a@dk", ("qa",))], app="tests.apps.stamped")
    producers["A"].send_task("tests.apps.stamped.add", (1, 1), queue=PARKED)
    wait_for(lambda: deploykit("-b", redis_url, "manifest", "list").returncode == 0, timeout=30)
    worker.stop()

    def states() -> Any:
        out = deploykit("builds", "--json", "-b", redis_url, "-Q", PARKED)
        return out.returncode == 0 and {r["build"]: r["state"] for r in json.loads(out.stdout)["builds"]}

    assert wait_for(lambda: (s := states()) and s.get("A") == "draining" and s, timeout=30) == {
        "A": "draining"
    }
    redis.Redis.from_url(redis_url).delete(PARKED)
    assert states() == {"A": "drained"}


def test_builds_cannot_reach_the_broker():
    result = deploykit("builds", "-b", "redis://127.0.0.1:1/0", "--timeout", "1")
    assert result.returncode == 69, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_rabbitmq_counts_need_peek(rabbitmq_url, start_workers):
    """Without --peek the queues' messages are unread (exit 5, totals given); with it, counted."""
    from celery import Celery

    start_workers(rabbitmq_url, [("a@dk", ("qa",))], app="tests.apps.stamped")
    app = Celery("producer", broker=rabbitmq_url, set_as_current=False)
    install(app, build="A", register=False)
    try:
        for n in range(3):
            app.send_task("tests.apps.stamped.add", (n, n), queue=PARKED)
    finally:
        app.close()

    def unread() -> Any:
        out = deploykit("builds", "--json", "-b", rabbitmq_url, "-Q", PARKED)
        doc = json.loads(out.stdout)
        return out.returncode == 5 and doc["unread"] and doc["unread"][0]["messages"] == 3 and doc

    doc = wait_for(unread, timeout=30)  # the management API's counts lag a few seconds
    validate(doc)
    assert doc["complete"] is False and doc["unread"][0]["location"] == f"queue:{PARKED}"
    assert [(r["build"], r["state"], r["messages"]["total"]) for r in doc["builds"]] == [("A", "active", 0)]

    peeked = deploykit("builds", "--json", "--peek", "-b", rabbitmq_url, "-Q", PARKED)
    assert peeked.returncode == 0, peeked.stderr
    doc = json.loads(peeked.stdout)
    assert [(r["build"], r["messages"]["queues"]) for r in doc["builds"]] == [("A", {PARKED: 3})]
