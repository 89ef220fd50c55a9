"""``drain`` / ``resume`` / ``shutdown`` end to end on Redis: real workers, the real CLI."""

from __future__ import annotations

import signal
import time

import pytest
import redis

from tests.orchestrate.live import (
    active_queues,
    deploykit,
    deploykit_bg,
    result_json,
    send,
    succeeded,
    wait_for,
)

pytestmark = pytest.mark.integration

SLEEP = "tests.apps.basic.sleep"
ADD = "tests.apps.basic.add"


def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def test_drain_waits_for_running_and_reserved_tasks_then_resume_readds(redis_url, start_workers):
    (w1,) = start_workers(redis_url, [("w1@dk", ("celery", "emails"))])
    start_workers(redis_url, [("w2@dk", ("celery",))])
    ids = [send(redis_url, SLEEP, (1.2,), queue="emails") for _ in range(3)]
    wait_for(lambda: "] received" in w1.log())

    started = time.monotonic()
    proc = deploykit(redis_url, "drain", "--worker", "w1", "--timeout", "60s", "--json")
    took = time.monotonic() - started
    doc = result_json(proc)
    assert proc.returncode == 0, proc.stderr
    assert doc["schema"] == "deploykit.drain/1" and doc["status"] == "drained"
    # exit 0 only once every task it held has run (1 running + 2 reserved, 1.2 s each)
    assert succeeded(w1.log()) == 3, w1.log()[-2000:]
    assert took >= 3.0
    assert sorted((c["worker"], c["queue"]) for c in doc["cancelled"]) == [
        ("w1@dk", "celery"),
        ("w1@dk", "emails"),
    ]
    assert doc["remaining"] == {
        "active": 0,
        "reserved": 0,
        "eta_waited": 0,
        "ready": None,
        "unacked": None,
        "incompatible": None,
    }
    assert active_queues(redis_url, "w1@dk") == []
    assert active_queues(redis_url, "w2@dk") == ["celery"]
    assert len(ids) == 3

    # intake really stopped: a new task on 'emails' (only w1 consumed it) stays in the queue
    send(redis_url, ADD, (1, 2), queue="emails")
    time.sleep(1.0)
    assert _redis(redis_url).llen("emails") == 1
    # the record is in the broker, with a TTL
    client = _redis(redis_url)
    assert client.hlen("deploykit:consumers:celery") == 2
    assert 0 < client.ttl("deploykit:consumers:celery") <= 7 * 86400

    proc = deploykit(redis_url, "resume", "--json")
    doc = result_json(proc)
    assert proc.returncode == 0, proc.stderr
    assert sorted((r["worker"], r["queue"]) for r in doc["restored"]) == [
        ("w1@dk", "celery"),
        ("w1@dk", "emails"),
    ]
    assert active_queues(redis_url, "w1@dk") == ["celery", "emails"]
    wait_for(lambda: client.llen("emails") == 0, timeout=10)
    assert not client.exists("deploykit:consumers:celery")


def test_min_consumers_refuses_and_no_worker_is_69(redis_url, start_workers):
    start_workers(redis_url, [("w1@dk", ("celery",))])
    proc = deploykit(redis_url, "drain", "--min-consumers", "1", "--json")
    assert proc.returncode == 4, proc.stderr
    assert result_json(proc)["status"] == "refused"
    assert active_queues(redis_url, "w1@dk") == ["celery"]
    text = deploykit(redis_url, "drain", "--min-consumers", "1")
    assert text.returncode == 4
    # said once: the error line on stderr, not again on stdout
    assert "refused" not in text.stdout and text.stderr.count("refused") == 1, (text.stdout, text.stderr)
    assert "deploykit: error: refused: --min-consumers 1 would be violated" in text.stderr
    assert not _redis(redis_url).exists("deploykit:consumers:celery")

    proc = deploykit(redis_url, "drain", "--worker", "nobody*")
    assert proc.returncode == 69 and "no selected worker answers" in proc.stderr


def test_sigint_during_drain_puts_every_consumer_back(redis_url, start_workers):
    (w1,) = start_workers(redis_url, [("w1@dk", ("celery", "emails"))])
    send(redis_url, SLEEP, (20,))
    wait_for(lambda: active_queues(redis_url, "w1@dk") == ["celery", "emails"])
    time.sleep(0.5)
    proc = deploykit_bg(redis_url, "drain", "--json")
    wait_for(lambda: active_queues(redis_url, "w1@dk") == [], timeout=20)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert '"status": "interrupted"' in out and '"rolled_back": true' in out
    assert active_queues(redis_url, "w1@dk") == ["celery", "emails"]
    assert not _redis(redis_url).exists("deploykit:consumers:celery")
    w1.kill()  # do not wait out the 20 s task at teardown


def test_worker_sigkilled_during_drain_is_a_clear_failure(redis_url, start_workers):
    (w1,) = start_workers(redis_url, [("w1@dk", ("celery",))])
    send(redis_url, SLEEP, (30,))
    wait_for(lambda: "] received" in w1.log())
    proc = deploykit_bg(redis_url, "drain", "--json", "--timeout", "60")
    wait_for(lambda: active_queues(redis_url, "w1@dk") == [], timeout=20)
    w1.kill()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err, w1.log()[-1500:])
    assert '"lost_workers": [\n    "w1@dk"' in out
    assert "stopped answering" in err


def test_shutdown_hands_back_reserved_and_eta_tasks(redis_url, start_workers):
    (w1,) = start_workers(redis_url, [("w1@dk", ("celery",))], env={"DEPLOYKIT_TEST_PREFETCH": "4"})
    client = _redis(redis_url)
    # Long enough to be still running when the CLI looks, even on a loaded machine (parallel tests).
    send(redis_url, SLEEP, (4,))
    send(redis_url, ADD, (1, 1))
    send(redis_url, ADD, (2, 2))
    send(redis_url, ADD, (3, 3), countdown=600)
    wait_for(lambda: client.hlen("unacked") >= 3, timeout=10)
    wait_for(lambda: w1.log().count("] received") == 4, timeout=10)

    proc = deploykit(redis_url, "shutdown", "--worker", "w1@dk", "--timeout", "30s", "--json")
    doc = result_json(proc)
    assert proc.returncode == 0, proc.stderr
    assert doc["status"] == "done"
    (worker,) = doc["workers"]
    assert worker["gone"] and worker["active"] == 1
    assert worker["reserved"] + worker["scheduled"] == 3 == doc["held"] == doc["returned"]
    assert doc["verified"] is True
    assert w1.wait(20) is not None  # the process really exited
    assert succeeded(w1.log()) == 1  # the running task finished
    assert client.hlen("unacked") == 0
    assert client.llen("celery") == 3  # 2 reserved + 1 ETA are back in the queue


def test_until_empty_incompatible_with_waits_only_for_messages_the_new_release_cannot_run(
    redis_url, start_workers, tmp_path
):
    import json

    from tests.orchestrate.live import control

    new = tmp_path / "new.json"
    snap = deploykit(redis_url, "manifest", "snapshot", "-A", "tests.apps.basic", "-o", str(new))
    assert snap.returncode == 0, snap.stderr
    manifest = json.loads(new.read_text())
    del manifest["tasks"]["tests.apps.basic.add"]  # the new release drops `add`
    new.write_text(json.dumps(manifest))

    start_workers(redis_url, [("w1@dk", ("celery",))])
    for i in range(2):
        send(redis_url, ADD, (i, i), queue="reports")
    send(redis_url, "tests.apps.basic.send_email", ("a@b",), queue="reports")

    args = ("drain", "--until-empty", "--incompatible-with", str(new), "--queue", "reports", "--json")
    late = deploykit(redis_url, *args, "--timeout", "2s")
    doc = result_json(late)
    assert late.returncode == 3, late.stderr
    assert doc["mode"] == "until-compatible" and doc["remaining"]["incompatible"] == 2
    assert doc["cancelled"] == []

    proc = deploykit_bg(redis_url, *args, "--timeout", "60s")
    time.sleep(1.5)
    control(redis_url).add_consumer("reports", destination=["w1@dk"], reply=True)  # old code runs them
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["status"] == "drained"
