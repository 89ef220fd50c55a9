"""``deploykit probe`` end to end: probes through real queues on Redis and RabbitMQ, a cancelled
consumer and a stuck worker, and no residue (events restored, probe results forgotten)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from deploykit.demo.processes import free_port
from tests.cli import run_deploykit

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.configurable"


def deploykit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_deploykit(*args, env=env)


def probe_json(*args: str, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = deploykit("probe", "--json", *args, env=env)
    assert result.stdout, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "deploykit.probe/1"
    return result.returncode, doc


def by_queue(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {q["queue"]: q for q in doc["queues"]}


def cancel_consumer(broker_url: str, queue: str, node: str) -> None:
    from celery import Celery

    app = Celery("ops", broker=broker_url, set_as_current=False)
    app.control.cancel_consumer(queue, destination=[node], reply=True, timeout=5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # cancel_consumer runs with call_soon on the worker
        active = app.control.inspect(destination=[node], timeout=2).active_queues() or {}
        if queue not in {q["name"] for q in active.get(node, [])}:
            app.close()
            return
        time.sleep(0.2)
    app.close()
    raise AssertionError(f"{node} still consumes {queue}")


def test_probe_redis_events_backend_and_cancelled_consumer(redis_url: str, start_workers: Any) -> None:
    settings = {"result_backend": redis_url}
    env = {"DEPLOYKIT_TEST_BROKER": redis_url, "DEPLOYKIT_TEST_SETTINGS": json.dumps(settings)}
    start_workers(redis_url, [("w1@dk", ("celery",)), ("w2@dk", ("celery", "emails"))], app=APP, env=env)

    # -b only: no app, no backend -> confirmed through task events, switched on and off again.
    code, doc = probe_json("-b", redis_url, env={})
    assert code == 0, doc
    assert doc["ok"] and doc["confirmed_via"] == "events"
    assert doc["events_enabled_on"] == ["w1@dk", "w2@dk"]
    queues = by_queue(doc)
    assert set(queues) == {"celery", "emails"}
    assert queues["emails"]["status"] == "processed" and queues["emails"]["worker"] == "w2@dk"
    assert queues["celery"]["worker"] in {"w1@dk", "w2@dk"}
    assert 0 < queues["celery"]["latency"] < 5 and doc["elapsed"] < 5
    # Events were off again afterwards: a second probe has to switch them on again.
    code, again = probe_json("-b", redis_url, "-Q", "celery", env={})
    assert code == 0 and again["events_enabled_on"] == ["w1@dk", "w2@dk"]

    # -A with a result backend: confirmed through it, and the stored results are forgotten.
    code, doc = probe_json("-A", APP, env=env)
    assert code == 0, doc
    assert doc["confirmed_via"] == "result-backend" and doc["events_enabled_on"] == []
    assert by_queue(doc)["emails"]["worker"] == "w2@dk"  # its only consumer
    import redis

    client = redis.Redis.from_url(redis_url)
    assert client.keys("celery-task-meta-deploykit-probe-*") == []
    assert [m for m in client.smembers("_kombu.binding.celeryev") if b"deploykit-probe" in m] == []
    client.close()

    # A consumer cancelled: asked for by name, the queue fails; by default it is not probed.
    cancel_consumer(redis_url, "emails", "w2@dk")
    result = deploykit("probe", "-b", redis_url, "-Q", "emails", "-Q", "celery", env={})
    assert result.returncode == 1
    assert "emails" in result.stdout and "no-consumers" in result.stdout
    code, doc = probe_json("-b", redis_url, "-Q", "emails", env={})
    assert code == 1 and by_queue(doc)["emails"]["status"] == "no-consumers"
    code, doc = probe_json("-b", redis_url, env={})
    assert code == 0 and set(by_queue(doc)) == {"celery"}


def test_stuck_worker_is_reported_as_not_processing(redis_url: str, start_workers: Any) -> None:
    env = {"DEPLOYKIT_TEST_BROKER": redis_url}
    (worker,) = start_workers(redis_url, [("stuck@dk", ("celery",))], app=APP, env=env)
    from celery import Celery

    producer = Celery("producer", broker=redis_url, set_as_current=False)
    producer.send_task("tests.apps.configurable.sleep", args=[30])
    producer.close()
    deadline = time.monotonic() + 10
    while "tests.apps.configurable.sleep" not in worker.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    started = time.monotonic()
    code, doc = probe_json("-b", redis_url, "--timeout", "2s", env={})
    assert time.monotonic() - started < 10
    assert code == 1 and not doc["ok"]
    celery = by_queue(doc)["celery"]
    assert celery["status"] == "timeout" and celery["processed"] is False
    assert "stuck@dk" in celery["detail"]  # it received the probe but could not run it
    worker.kill()  # do not wait out the 30 s task


def test_probe_rabbitmq_and_cancelled_consumer(rabbitmq_url: str, start_workers: Any) -> None:
    env = {"DEPLOYKIT_TEST_BROKER": rabbitmq_url}
    start_workers(rabbitmq_url, [("rw1@dk", ("celery", "emails"))], app=APP, env=env)
    code, doc = probe_json("-A", APP, "--timeout", "5s", env=env)
    assert code == 0, doc
    queues = by_queue(doc)
    assert {"celery", "emails"} <= set(queues)
    assert all(q["status"] == "processed" and q["worker"] == "rw1@dk" for q in queues.values())

    # No residue: the probe's event queue (auto-delete) is gone with its consumer.
    assert [q for q in _rabbit_queues(rabbitmq_url) if "deploykit-probe" in q] == []

    cancel_consumer(rabbitmq_url, "emails", "rw1@dk")
    code, doc = probe_json("-A", APP, "-Q", "emails", "-Q", "celery", "--timeout", "5s", env=env)
    assert code == 1
    assert by_queue(doc)["emails"]["status"] == "no-consumers"
    assert by_queue(doc)["celery"]["status"] == "processed"


def _rabbit_queues(url: str) -> list[str]:
    import httpx

    from tests.conftest import RABBIT_AUTH, RABBIT_MGMT

    vhost = url.rsplit("/", 1)[1]
    response = httpx.get(f"{RABBIT_MGMT}/api/queues/{vhost}", auth=RABBIT_AUTH, params={"columns": "name"})
    return [q["name"] for q in response.json()]


def test_unreachable_broker_or_no_worker_exits_69(redis_url: str) -> None:
    result = deploykit("probe", "-b", f"redis://127.0.0.1:{free_port()}/0", env={})
    assert result.returncode == 69, result.stderr
    nobody = deploykit("probe", "-b", redis_url, env={})
    assert nobody.returncode == 69 and "nothing to probe" in nobody.stderr
