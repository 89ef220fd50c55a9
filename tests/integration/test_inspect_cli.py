"""``deploykit workers | queues | scheduled | status`` end to end: real Redis, real workers, the real CLI."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from deploykit.demo.processes import free_port
from tests.cli import run_deploykit
from tests.orchestrate.live import wait_for
from tests.output.shapes import validate

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def deploykit(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return run_deploykit(*args, env=env, timeout=timeout)


def send(broker_url: str, name: str, args=(), kwargs=None, **options) -> str:
    from celery import Celery

    app = Celery("producer", broker=broker_url, set_as_current=False)
    result = app.send_task(name, args=list(args), kwargs=kwargs or {}, **options)
    return str(result.id)


@pytest.fixture
def busy_fleet(redis_url, start_workers):
    """Two workers: w1 consumes celery, w2 consumes celery+emails; both hold work."""
    workers = start_workers(
        redis_url,
        [("w1@dk", ("celery",)), ("w2@dk", ("celery", "emails"))],
        env={"DEPLOYKIT_TEST_PREFETCH": "4"},
    )
    ids = {
        "sleep": [send(redis_url, "tests.apps.basic.sleep", (6,)) for _ in range(2)],
        "eta": [send(redis_url, "tests.apps.basic.add", (i, i), countdown=300) for i in range(3)],
        "eta_far": [send(redis_url, "tests.apps.basic.add", (9, 9), countdown=7200)],
        "emails": [send(redis_url, "tests.apps.basic.send_email", ("a@b",), queue="emails", countdown=120)],
        "prio": [
            send(redis_url, "tests.apps.basic.add", (1, 1), queue="reports", priority=p) for p in (0, 5, 9, 9)
        ],
    }
    # The workers took all they can: the 2 sleeps, the 4 ETA tasks and the email (not `reports`).
    wait_for(lambda: sum(w.log().count("] received") for w in workers) == 7)
    return ids


def test_status_workers_queues_scheduled_json(redis_url, busy_fleet):
    env = {"DEPLOYKIT_BROKER": redis_url, "DEPLOYKIT_APP": "tests.apps.basic"}

    workers = deploykit("workers", "--json", env=env)
    assert workers.returncode == 0, workers.stderr
    doc = json.loads(workers.stdout)
    validate(doc)
    assert doc["schema"] == "deploykit.workers/1"
    by_name = {w["hostname"]: w for w in doc["workers"]}
    assert sorted(by_name) == ["w1@dk", "w2@dk"]
    assert by_name["w2@dk"]["queues"] == ["celery", "emails"]
    assert by_name["w1@dk"]["pool"] == "prefork" and by_name["w1@dk"]["concurrency"] == 1
    assert sum(w["active"] for w in doc["workers"]) == 2
    assert sum(w["scheduled"] for w in doc["workers"]) == 5
    assert doc["discovery"]["method"] == "broker-mailboxes"

    queues = deploykit("queues", "--json", env=env)
    assert queues.returncode == 0, queues.stderr
    validate(json.loads(queues.stdout))
    rows = {q["name"]: q for q in json.loads(queues.stdout)["queues"]}
    assert set(rows) >= {"celery", "emails", "reports"}
    # reports has no consumer: 4 messages across the priority sub-lists, none unacked.
    assert rows["reports"]["ready"] == 4 and rows["reports"]["consumers"] == 0
    assert rows["reports"]["ready_by_priority"] in (
        {"0": 1, "3": 1, "9": 2},
        {"0": 1, "3": 1, "6": 0, "9": 2},
    )
    # ETA tasks sit unacked in the workers' timers and are counted as such.
    assert rows["emails"]["eta_held"] == 1
    assert rows["celery"]["eta_held"] == 4
    assert rows["celery"]["consumers"] == 2 and rows["celery"]["consumers_source"] == "workers"
    # The two running sleep tasks were acked when they started (acks_late off): only ETA ones remain.
    assert rows["celery"]["unacked"] == 4

    scheduled = deploykit("scheduled", "--json", env=env)
    validate(json.loads(scheduled.stdout))
    entries = json.loads(scheduled.stdout)["scheduled"]
    assert len(entries) == 5
    etas = [e["eta"] for e in entries]
    assert etas == sorted(etas)
    far = [e for e in entries if e["seconds_left"] > 3600]
    assert len(far) == 1 and far[0]["hazards"][0]["code"] == "ETA_BEYOND_VISIBILITY_TIMEOUT"
    within = json.loads(deploykit("scheduled", "--json", "--within", "3m", env=env).stdout)["scheduled"]
    assert [e["queue"] for e in within] == ["emails"]

    status = deploykit("status", "--json", env=env)
    doc = json.loads(status.stdout)
    validate(doc)
    assert status.returncode == 0
    assert doc["verdict"]["busy"] is True
    assert {h["code"] for h in doc["hazards"]} >= {"ETA_BEYOND_VISIBILITY_TIMEOUT", "NO_CONSUMER"}
    assert deploykit("status", "--fail-if-busy", env=env).returncode == 1

    text = deploykit("status", env=env)
    assert text.returncode == 0 and "BUSY" in text.stdout and "w2@dk" in text.stdout


def test_status_is_quick_when_the_fleet_answered(redis_url, start_workers):
    start_workers(redis_url, [("w1@dk", ("celery",))])
    started = time.monotonic()
    result = deploykit("status", "--json", "-b", redis_url, "--timeout", "5")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 4, "status must not wait out the 5 s reply timeout"
    assert json.loads(result.stdout)["verdict"]["busy"] is False


def test_global_keyprefix_and_custom_sep_are_honoured(redis_url, start_workers):
    options = {"global_keyprefix": "shop:", "sep": ":", "priority_steps": [0, 5]}
    env = {"DEPLOYKIT_TEST_TRANSPORT_OPTIONS": json.dumps(options)}
    start_workers(redis_url, [("w1@dk", ("celery",))], env=env)
    from celery import Celery

    producer = Celery("p", broker=redis_url, set_as_current=False)
    producer.conf.broker_transport_options = options
    for priority in (0, 7, 7):
        producer.send_task("tests.apps.basic.add", args=[1, 2], queue="reports", priority=priority)
    result = deploykit(
        "queues", "--json", "-A", "tests.apps.basic", env={"DEPLOYKIT_TEST_BROKER": redis_url, **env}
    )
    assert result.returncode == 0, result.stderr
    rows = {q["name"]: q for q in json.loads(result.stdout)["queues"]}
    assert rows["reports"]["ready"] == 3
    workers = json.loads(
        deploykit(
            "workers", "--json", "-A", "tests.apps.basic", env={"DEPLOYKIT_TEST_BROKER": redis_url, **env}
        ).stdout
    )
    assert [w["hostname"] for w in workers["workers"]] == ["w1@dk"]


def test_no_worker_online(redis_url):
    result = deploykit("workers", "-b", redis_url)
    assert result.returncode == 69
    assert "No worker answered" in result.stdout
    status = deploykit("status", "--json", "-b", redis_url)
    assert status.returncode == 0
    assert json.loads(status.stdout)["verdict"]["counts"]["workers"] == 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["status", "-b", "redis://:s3cret-pw@127.0.0.1:{port}/0"], 69, "cannot reach"),
        (["queues", "-b", "amqp://guest:s3cret-pw@127.0.0.1:{port}//"], 69, "cannot reach"),
        (["status", "-b", "nosuch://x"], 2, "unknown broker URL scheme"),
        (["status", "-b", "not a url"], 2, "invalid broker URL"),
        (["status", "-A", "tests.apps.does_not_exist"], 2, "cannot import app module"),
        (["status", "-b", "redis://x/0", "--timeout", "soon"], 2, "invalid timeout"),
        (["scheduled", "-b", "redis://x/0", "--within", "forever"], 2, "invalid --within"),
        (["status", "--no-such-flag"], 2, "No such option"),
        (["queues", "-b", "filesystem://"], 2, "No such file or directory"),
    ],
)
def test_bad_input_is_one_line_and_a_documented_exit_code(args, code, message):
    port = str(free_port())
    args = [a.replace("{port}", port) for a in args]
    started = time.monotonic()
    result = deploykit(*args, timeout=30)
    assert time.monotonic() - started < 15
    assert result.returncode == code, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_no_broker_configured():
    result = deploykit("queues")
    assert result.returncode == 2 and "no broker configured" in result.stderr


def test_eta_messages_no_worker_has_taken_are_counted_and_listed(redis_url):
    """No worker runs: the ETA messages wait in the ready lists, which is what a deploy window is
    about. ``scheduled`` lists them (read without consuming), ``status`` counts them."""
    env = {"DEPLOYKIT_BROKER": redis_url, "DEPLOYKIT_APP": "tests.apps.basic", "NO_COLOR": "1"}
    far = send(redis_url, "tests.apps.basic.add", (1, 2), countdown=7200)
    soon = send(redis_url, "tests.apps.basic.send_email", ("a@b",), queue="emails", countdown=120)
    send(redis_url, "tests.apps.basic.add", (3, 4))  # a plain message: not scheduled

    doc = json.loads(deploykit("scheduled", "--json", env=env).stdout)
    entries = {e["id"]: e for e in doc["scheduled"]}
    assert set(entries) == {far, soon}
    assert {e["location"] for e in entries.values()} == {"queue"}
    assert entries[soon]["queue"] == "emails" and entries[far]["queue"] == "celery"
    assert doc["waiting_eta"]["by_queue"] == {"celery": 1, "emails": 1}

    text = deploykit("scheduled", env=env)
    assert text.returncode == 0, text.stderr
    assert "No scheduled" not in text.stdout
    assert "queue (not taken yet)" in text.stdout and "tests.apps.basic.add" in text.stdout

    status = deploykit("status", env=env)
    assert (
        "Scheduled: 0 ETA task(s) held, 2 waiting in queues (no worker has taken them yet)" in status.stdout
    )
    assert "2 scheduled (2 still in queues)" in status.stdout
    status_doc = json.loads(deploykit("status", "--json", env=env).stdout)
    assert status_doc["verdict"]["counts"]["scheduled"] == 2 and status_doc["verdict"]["busy"]
    # read, never consumed
    assert json.loads(deploykit("queues", "--json", env=env).stdout)["queues"][0]["ready"] == 2
