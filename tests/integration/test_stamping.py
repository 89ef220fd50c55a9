"""``deploykit.celery.install`` end to end: real workers of a stamped app, messages read back from
the broker (Redis lists; RabbitMQ's management API with requeue), ``deploykit workers --json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis

from deploykit.celery import HEADER, install
from tests.conftest import RABBIT_AUTH, RABBIT_MGMT
from tests.integration.test_inspect_cli import deploykit
from tests.orchestrate.live import wait_for

pytestmark = pytest.mark.integration

PARKED = "parked"  # a queue no test worker consumes: what is published there stays to be read


def _redis_headers(url: str) -> Callable[[], list[dict[str, Any]]]:
    def read() -> list[dict[str, Any]]:
        client = redis.Redis.from_url(url)
        try:
            return [json.loads(raw)["headers"] for raw in client.lrange(PARKED, 0, -1)]
        finally:
            client.close()

    return read


def _rabbitmq_headers(vhost: str) -> Callable[[], list[dict[str, Any]]]:
    def read() -> list[dict[str, Any]]:
        with httpx.Client(base_url=RABBIT_MGMT, auth=RABBIT_AUTH, timeout=10) as client:
            response = client.post(
                f"/api/queues/{quote(vhost, safe='')}/{PARKED}/get",
                json={"count": 100, "ackmode": "ack_requeue_true", "encoding": "auto"},
            )
        if response.status_code == 404:  # not declared yet
            return []
        response.raise_for_status()
        return [m["properties"].get("headers") or {} for m in response.json()]

    return read


def _producer(url: str, build: str | None) -> Any:
    from celery import Celery

    app = Celery("producer", broker=url, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = True
    if build is not None:
        install(app, build=build)
    return app


def _check_stamping(url: str, read: Callable[[], list[dict[str, Any]]], start_workers: Any) -> None:
    (stamped_worker,) = start_workers(url, [("stamped@dk", ("celery",))], app="tests.apps.stamped")
    start_workers(url, [("plain@dk", ("celery",))], app="tests.apps.basic")
    stamped, plain = _producer(url, "A"), _producer(url, None)

    # 1. apply_async of a task of the stamped app (a web process)
    @stamped.task(name="tests.apps.stamped.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    direct = add.apply_async((1, 2), queue=PARKED).id
    # 2. beat-style: send_task by name (celery/beat.py, Scheduler.apply_async)
    by_name = stamped.send_task("tests.apps.stamped.add", (3, 4), queue=PARKED).id
    # 3. a task calling a task, in the worker of the stamped app
    parent = stamped.send_task("tests.apps.stamped.fan_out", (5,))
    # 4. another app in the same process, not installed: its messages are not stamped
    other = plain.send_task("tests.apps.stamped.add", (6, 7), queue=PARKED).id

    headers = wait_for(lambda: (h := read()) and len(h) >= 4 and h, timeout=30)
    by_id = {h["id"]: h for h in headers}
    assert by_id[direct][HEADER] == "A"
    assert by_id[by_name][HEADER] == "A"
    assert HEADER not in by_id[other]
    (child,) = [h for h in headers if h["parent_id"] == parent.id]
    assert child[HEADER] == "A" and child["task"] == "tests.apps.stamped.add"
    # Nothing else in the message changed: the same headers as the unstamped message has.
    assert set(by_id[direct]) - {HEADER} == set(by_id[other])

    doc = json.loads(deploykit("workers", "--json", "-b", url).stdout)
    builds = {w["hostname"]: w["build"] for w in doc["workers"]}
    assert builds == {"stamped@dk": "A", "plain@dk": None}
    text = deploykit("workers", "-b", url).stdout
    assert "build" in text and [line for line in text.splitlines() if "stamped@dk" in line and " A" in line]

    # The stamped worker registered its manifest under its build when it started.
    def registered() -> Any:
        listed = deploykit("-b", url, "manifest", "list", "--json")
        return listed.returncode == 0 and json.loads(listed.stdout)["builds"]

    try:
        (entry,) = wait_for(registered, timeout=30)
    except AssertionError:
        raise AssertionError(f"no registry entry; worker log:\n{stamped_worker.log()}") from None
    assert entry["build"] == "A" and entry["tasks"] == 2


def test_stamping_on_redis(redis_url, start_workers):
    _check_stamping(redis_url, _redis_headers(redis_url), start_workers)


def test_stamping_on_rabbitmq(rabbitmq_url, rabbitmq_vhost, start_workers):
    _check_stamping(rabbitmq_url, _rabbitmq_headers(rabbitmq_vhost), start_workers)


def test_a_worker_without_deploykit_runs_a_stamped_message(redis_url, start_workers):
    """The header is ignored by a worker of a release without deploykit: the task runs."""
    (worker,) = start_workers(redis_url, [("plain@dk", ("celery",))], app="tests.apps.basic")
    task_id = _producer(redis_url, "A").send_task("tests.apps.basic.add", (2, 3)).id
    wait_for(lambda: f"add[{task_id}] succeeded" in worker.log(), timeout=30)


def test_a_registry_failure_only_logs_a_warning(redis_url, start_workers, tmp_path):
    """The registry cannot be written (its directory is a file): the worker starts and works."""
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    env = {"DEPLOYKIT_REGISTRY": str(blocked)}
    (worker,) = start_workers(redis_url, [("stamped@dk", ("celery",))], app="tests.apps.stamped", env=env)
    wait_for(lambda: "was not registered" in worker.log(), timeout=30)
    assert "deploykit: the manifest of build A was not registered" in worker.log()
    parent = _producer(redis_url, "A").send_task("tests.apps.stamped.fan_out", (1,)).id
    wait_for(lambda: f"fan_out[{parent}] succeeded" in worker.log(), timeout=30)
    doc = json.loads(deploykit("workers", "--json", "-b", redis_url).stdout)
    assert [w["build"] for w in doc["workers"]] == ["A"]


def test_no_build_stamps_nothing_and_warns_once(redis_url):
    """No argument, no DEPLOYKIT_BUILD: nothing stamped, one warning for the process (two apps)."""
    script = f"""
import json, warnings, redis
warnings.simplefilter("always")
from celery import Celery
from deploykit.celery import install
caught = []
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    apps = [Celery(f"a{{i}}", broker={redis_url!r}, set_as_current=False) for i in range(2)]
    print(json.dumps([install(app) for app in apps]))
apps[0].send_task("t.add", (1, 2), queue="parked")
raw = redis.Redis.from_url({redis_url!r}).lrange("parked", 0, -1)
print(json.dumps([json.loads(r)["headers"] for r in raw]))
print(json.dumps([str(w.message) for w in caught]))
"""
    env = {k: v for k, v in os.environ.items() if k != "DEPLOYKIT_BUILD"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    installed, headers, caught = (json.loads(line) for line in done.stdout.splitlines())
    assert installed == [None, None]
    assert len(headers) == 1 and HEADER not in headers[0]
    assert len(caught) == 1 and "DEPLOYKIT_BUILD" in caught[0]


def test_build_from_the_environment(redis_url):
    env = {**os.environ, "DEPLOYKIT_BUILD": "2026.12.01-env"}
    script = f"""
import json, redis
from celery import Celery
from deploykit.celery import install
app = Celery("a", broker={redis_url!r}, set_as_current=False)
print(install(app))
app.send_task("t.add", (1, 2), queue="parked")
print(json.loads(redis.Redis.from_url({redis_url!r}).lrange("parked", 0, -1)[0])["headers"]["{HEADER}"])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2026.12.01-env", "2026.12.01-env"]


def test_scheduled_shows_the_build_of_an_eta_message_in_the_broker(redis_url):
    """No worker has taken them: the ETA messages are read from the queue, with their build."""
    stamped, plain = _producer(redis_url, "A"), _producer(redis_url, None)
    ids = {
        stamped.send_task("tests.apps.basic.add", (1, 2), countdown=600).id: "A",
        plain.send_task("tests.apps.basic.add", (3, 4), countdown=600).id: None,
    }
    doc = json.loads(deploykit("scheduled", "--json", "-b", redis_url).stdout)
    assert {e["id"]: e["build"] for e in doc["scheduled"]} == ids
    text = deploykit("scheduled", "-b", redis_url).stdout
    assert "build" in text and [line for line in text.splitlines() if line.rstrip().endswith(" A")]
