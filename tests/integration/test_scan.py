"""``deploykit scan`` end to end: release-1 messages waiting in a real Redis (queued, held by a
real worker as ETA tasks, in a chain, on a beat schedule) are scanned against release 2; then
release 2's worker really runs them, and what happened must match the scan's predictions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli import run_deploykit

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ETA_SECONDS = 15


def deploykit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_deploykit(*args, env=env, timeout=120)


def _snapshot(module: str, path: Path, env: dict[str, str]) -> None:
    code = (
        "import sys, importlib; from deploykit.manifest.collect import snapshot; "
        "from deploykit.manifest.model import dumps; "
        f"app = importlib.import_module('{module}').app; "
        "sys.stdout.write(dumps(snapshot(None, app=app)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        check=True,
    )
    path.write_text(result.stdout)


def _results(client) -> dict[str, dict]:
    out = {}
    for key in client.scan_iter("celery-task-meta-*"):
        meta = json.loads(client.get(key))
        out[meta["task_id"]] = meta
    return out


def test_scan_predicts_what_release_two_really_does(redis_url, start_workers, tmp_path):
    import redis

    env = {"DEPLOYKIT_TEST_BROKER": redis_url, "DEPLOYKIT_TEST_BACKEND": redis_url}
    os.environ.update(env)
    try:
        from celery import chain

        from tests.apps import shop_v1
    finally:
        for key in env:
            os.environ.pop(key)
    v1 = shop_v1
    v1.app.conf.broker_url = redis_url
    v1.app.conf.result_backend = redis_url
    old_manifest = tmp_path / "v1.json"
    _snapshot("tests.apps.shop_v1", old_manifest, env)

    # A release-1 worker picks up ETA tasks and holds them (Redis: in the unacked hash). It
    # consumes only the `eta` queue, so the messages below stay waiting in `celery`/`emails`.
    (worker,) = start_workers(redis_url, [("v1@dk", ("eta",))], app="tests.apps.shop_v1", env=env)
    eta_ids = [
        v1.report.apply_async((3,), countdown=ETA_SECONDS, queue="eta").id,
        v1.notify.apply_async((6,), countdown=ETA_SECONDS, queue="eta").id,
    ]
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 20
    while client.hlen("unacked") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.hlen("unacked") == 2

    # Messages produced by release 1 wait in the queues.
    ids = {
        "misbound": [v1.charge.delay(i, 10.0 * i).id for i in (1, 2, 3)],
        "runs": [
            v1.charge.apply_async(kwargs={"order_id": 4, "amount": 40.0}).id,
            v1.charge.apply_async(kwargs={"order_id": 5, "amount": 50.0}).id,
            v1.report.delay(9).id,
            v1.report.delay(10).id,
            v1.report.apply_async((8,), priority=5).id,
            v1.email.apply_async(("a@example.com",), {"subject": "kw"}).id,
        ],
        "fails": [
            v1.notify.delay(5).id,
            v1.notify.delay(7).id,
            v1.email.delay("b@example.com", "positional").id,
        ],
        "discarded": [v1.legacy_sync.delay("acc-1").id, v1.legacy_sync.delay("acc-2").id],
    }

    def task_data() -> dict[bytes, bytes]:
        """Every key holding task messages or their routing (remote-control bookkeeping aside,
        which the live worker itself rewrites all the time)."""
        skip = (b"celery-task-meta", b"_kombu.binding_deadlines", b"ledger")
        return {k: client.dump(k) for k in client.keys("*") if not k.startswith(skip) and b"pidbox" not in k}

    chained = chain(v1.report.s(4), v1.notify.s()).delay()
    ids["fails"].append(chained.parent.id)
    before = task_data()
    assert b"unacked" in before and b"celery" in before and b"emails" in before

    result = deploykit(
        "scan",
        "-A",
        "tests.apps.shop_v2",
        "-b",
        redis_url,
        "--manifest",
        str(old_manifest),
        "--json",
        env=env,
    )
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "deploykit.scan/2"

    # The scan read without consuming or reordering anything: every key byte for byte.
    assert task_data() == before

    messages = {}
    beat = {}
    for group in doc["groups"]:
        for location, count in group["locations"].items():
            target = beat if location.startswith("beat:") else messages
            target[group["verdict"]] = target.get(group["verdict"], 0) + count
    assert messages == {"runs": 7, "misbound": 3, "fails": 5, "discarded": 2}
    assert beat == {"runs": 1, "fails": 1}
    # Beat entries are counted apart from messages, once each.
    assert doc["totals"]["breaking"] == 10 and doc["totals"]["scanned"] == 17
    assert doc["beat"]["entries"] == 2 and doc["beat"]["breaking"] == 1
    assert doc["verdict"] == "unsafe" and doc["totals"]["unchecked"] == 0
    by_task = {(g["task"], g["verdict"]): g for g in doc["groups"]}
    assert "channel" in next(iter(by_task[("shop.notify", "fails")]["reasons"]))
    assert by_task[("shop.charge", "misbound")]["count"] == 3
    assert by_task[("shop.legacy_sync", "discarded")]["count"] == 2
    eta_group = by_task[("shop.notify", "fails")]
    assert any(loc.startswith("unacked:") for loc in eta_group["locations"])
    assert eta_group["earliest_eta"] is not None

    # Now really deploy release 2 and compare.
    worker.stop(timeout=30)  # warm shutdown: its ETA tasks go back to the queue
    start_workers(redis_url, [("v2@dk", ("celery", "emails", "eta"))], app="tests.apps.shop_v2", env=env)
    # Until every message sent has its result. Not the chain's child: Celery 5.3 never records one
    # (waiting for it would wait out the whole deadline there).
    expected = {i for sent in ids.values() for i in sent} | set(eta_ids)
    deadline = time.monotonic() + ETA_SECONDS + 40
    while time.monotonic() < deadline:
        results = _results(client)
        if expected <= set(results):
            break
        time.sleep(0.5)
    results = _results(client)
    failures = [m for m in results.values() if m["status"] == "FAILURE"]
    type_errors = [m for m in failures if m["result"]["exc_type"] == "TypeError"]
    not_registered = [m for m in failures if m["result"]["exc_type"] == "NotRegistered"]
    # Each message predicted to fail failed with TypeError. The chain's parent ran, then sending
    # its next step raised TypeError (Celery checks arguments at apply_async); newer Celery also
    # marks that child as failed: one message, one or two failed results.
    predicted = set(ids["fails"]) | {eta_ids[1]}
    assert len(predicted) == messages["fails"]
    assert predicted <= {m["task_id"] for m in type_errors} <= predicted | {chained.id}
    assert results[eta_ids[0]]["status"] == "SUCCESS"
    assert len(not_registered) == messages["discarded"]
    assert {m["task_id"] for m in not_registered} == set(ids["discarded"])
    ledger = [json.loads(x) for x in client.lrange("ledger", 0, -1)]
    swapped = [e for e in ledger if e["task"] == "shop.charge" and isinstance(e["order_id"], float)]
    assert len(swapped) == messages["misbound"]
    for task_id in ids["runs"]:
        assert results[task_id]["status"] == "SUCCESS"


def test_check_with_broker_adds_waiting_message_findings(redis_url, tmp_path):
    env = {"DEPLOYKIT_TEST_BROKER": redis_url}
    old_manifest = tmp_path / "v1.json"
    _snapshot("tests.apps.shop_v1", old_manifest, env)
    from celery import Celery

    producer = Celery("producer", broker=redis_url, set_as_current=False)
    producer.send_task("shop.notify", args=[1])
    producer.send_task("shop.legacy_sync", args=["acc"])
    producer.send_task("shop.report", args=[3])

    plain = deploykit("check", "-A", "tests.apps.shop_v2", "--manifest", str(old_manifest), "--json", env=env)
    assert plain.returncode == 1, plain.stderr
    rules = {f["rule"] for f in json.loads(plain.stdout)["findings"]}
    assert "PARAM_ADDED_REQUIRED" in rules and not any(r.startswith("WAITING_") for r in rules)

    result = deploykit(
        "-b",
        redis_url,
        "check",
        "-A",
        "tests.apps.shop_v2",
        "--manifest",
        str(old_manifest),
        "--broker",
        "--json",
        env=env,
    )
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    waiting = {(f["rule"], f["task"]) for f in doc["findings"] if f["rule"].startswith("WAITING_")}
    # The queued report message runs.
    assert waiting == {("WAITING_FAILS", "shop.notify"), ("WAITING_DISCARDED", "shop.legacy_sync")}
    # The beat schedule's hourly-notify entry fails too: reported once, by the manifest rule that
    # names the entry, not counted again among the waiting messages.
    beat = [f for f in doc["findings"] if f["beat_entry"] or "beat entr" in f["message"]]
    assert [(f["rule"], f["beat_entry"]) for f in beat] == [("BEAT_ARGS_UNBOUND", "hourly-notify")]
    notify = next(f for f in doc["findings"] if f["rule"] == "WAITING_FAILS")
    assert notify["file"].endswith("tests/apps/shop_v2.py") and notify["line"]
    assert notify["message"].startswith("1 waiting message(s) would fail")
    # The numbers are data, not only prose.
    assert notify["data"]["count"] == 1 and notify["data"]["beat_entries"] == 0
    assert notify["data"]["locations"] == {"queue:celery": 1}
    assert len(notify["data"]["sample_ids"]) == 1
    assert any("waiting message(s) checked" in note for note in doc["notes"])
    assert doc["verdict"] == "failed" and doc["incomplete"] is None


def _rabbit_queue(client, vhost: str, name: str) -> dict:
    from urllib.parse import quote

    return client.get(f"/api/queues/{quote(vhost, safe='')}/{name}").json()


def test_rabbitmq_queues_are_read_only_with_peek_and_quorum_only_when_forced(
    rabbitmq_url, rabbitmq_vhost, tmp_path
):
    import httpx
    from celery import Celery
    from kombu import Queue

    env = {"DEPLOYKIT_TEST_BROKER": rabbitmq_url}
    old_manifest = tmp_path / "v1.json"
    _snapshot("tests.apps.shop_v1", old_manifest, env)
    producer = Celery("producer", broker=rabbitmq_url, set_as_current=False)
    producer.conf.task_queues = [Queue("celery"), Queue("strict", queue_arguments={"x-queue-type": "quorum"})]
    producer.send_task("shop.notify", args=[1], queue="celery")
    producer.send_task("shop.charge", args=[1, 2.0], queue="celery")
    producer.send_task("shop.report", args=[3], queue="celery")
    producer.send_task("shop.legacy_sync", args=["a"], queue="strict")

    args = [
        "scan",
        "-A",
        "tests.apps.shop_v2",
        "-b",
        rabbitmq_url,
        "--manifest",
        str(old_manifest),
        "--no-beat",
        "--json",
        "-Q",
        "celery",
        "-Q",
        "strict",
        *(arg for i in range(12) for arg in ("-Q", f"ghost{i:02}")),  # declared, not on the broker
    ]
    not_peeked = deploykit(*args, env=env)
    assert not_peeked.returncode == 5, not_peeked.stderr  # incomplete: never OK
    unread = json.loads(not_peeked.stdout)
    assert unread["totals"]["scanned"] == 0 and unread["verdict"] == "incomplete"
    assert (unread["totals"]["waiting"], unread["totals"]["unchecked"]) == (4, 4)
    assert {u["location"]: u["count"] for u in unread["unchecked"]} == {"queue:celery": 3, "queue:strict": 1}
    assert all("--peek" in u["remedy"] for u in unread["unchecked"])

    peeked = deploykit(*args, "--peek", env=env)
    assert peeked.returncode == 1, peeked.stderr  # breaking wins over incomplete
    doc = json.loads(peeked.stdout)
    verdicts = {(g["task"], g["verdict"]) for g in doc["groups"]}
    assert verdicts == {("shop.notify", "fails"), ("shop.charge", "misbound"), ("shop.report", "runs")}
    # One line per fact: what was peeked and what that did, the unknown queues together.
    assert doc["notes"][:2] == [
        "peeked 3 message(s) of queue celery: requeued in place and marked redelivered (management API get)",
        "12 queues (ghost00, ghost01, ghost02, ghost03, ghost04 and 7 more) not peeked: "
        "the broker does not know them",
    ]
    assert not any(note.startswith("queues read") for note in doc["notes"])
    assert [(u["location"], u["count"]) for u in doc["unchecked"]] == [("queue:strict", 1)]
    assert "--force" in doc["unchecked"][0]["remedy"]

    forced = json.loads(deploykit(*args, "--peek", "--force", env=env).stdout)
    assert ("shop.legacy_sync", "discarded") in {(g["task"], g["verdict"]) for g in forced["groups"]}
    assert any("moved to the back" in note for note in forced["notes"])
    assert forced["unchecked"] == [] and forced["totals"]["waiting"] == 4

    # Nothing was consumed: the messages are all still there.
    with httpx.Client(base_url="http://127.0.0.1:15672", auth=("guest", "guest")) as client:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            counts = (
                _rabbit_queue(client, rabbitmq_vhost, "celery").get("messages"),
                _rabbit_queue(client, rabbitmq_vhost, "strict").get("messages"),
            )
            if counts == (3, 1):
                break
            time.sleep(0.5)
        assert counts == (3, 1)


def test_rabbitmq_scan_and_check_never_say_ok_about_unread_messages(rabbitmq_url, tmp_path):
    """The issue's case: on RabbitMQ without --peek, the app's beat entries all run while 15
    messages wait unread. Not OK: incomplete (exit 5), in scan and in check --broker; the same
    beyond --peek-limit."""
    from celery import Celery

    env = {"DEPLOYKIT_TEST_BROKER": rabbitmq_url}
    manifest = tmp_path / "v1.json"
    _snapshot("tests.apps.shop_v1", manifest, env)
    producer = Celery("producer", broker=rabbitmq_url, set_as_current=False)
    for i in range(15):
        producer.send_task("shop.report", args=[i], queue="celery")

    common = ["-A", "tests.apps.shop_v1", "--manifest", str(manifest)]
    scanned = deploykit("-b", rabbitmq_url, "scan", *common, "--no-workers", "-Q", "celery", env=env)
    assert scanned.returncode == 5, scanned.stdout + scanned.stderr
    last = scanned.stdout.strip().splitlines()[-1]
    assert last.startswith("INCOMPLETE  0 message(s) checked"), last
    assert "2 beat entries: 2 runs" in last
    assert "incomplete: 15 of 15 waiting message(s) not checked (15 in queue:celery:" in last
    assert "pass --peek" in last

    limited = deploykit(
        "-b",
        rabbitmq_url,
        "scan",
        *common,
        "--no-workers",
        "-Q",
        "celery",
        "--peek",
        "--peek-limit",
        "10",
        "--json",
        env=env,
    )
    assert limited.returncode == 5, limited.stderr
    doc = json.loads(limited.stdout)
    assert (doc["totals"]["scanned"], doc["totals"]["unchecked"], doc["totals"]["waiting"]) == (10, 5, 15)
    assert "--peek-limit" in doc["unchecked"][0]["remedy"]

    checked = deploykit("-b", rabbitmq_url, "check", *common, "--broker", "--json", env=env)
    assert checked.returncode == 5, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert report["verdict"] == "incomplete" and report["failed"] is False
    assert report["incomplete"]["unchecked"] == 15
    assert report["incomplete"]["summary"].startswith("15 of 15 waiting message(s) not checked")
    assert {u["location"]: u["count"] for u in report["incomplete"]["locations"]} == {"queue:celery": 15}
    text = deploykit("-b", rabbitmq_url, "check", *common, "--broker", env=env)
    assert text.returncode == 5 and "INCOMPLETE: 15 of 15 waiting message(s) not checked" in text.stdout


def test_hostile_messages_in_a_real_queue_are_undecidable_never_a_crash(redis_url, tmp_path):
    """What a user sees when the queue holds anything at all: every message counted, the
    unreadable ones as undecidable with a reason, nothing unpickled, nothing moved, no traceback."""
    import base64
    import pathlib

    import redis
    from celery import Celery

    env = {"DEPLOYKIT_TEST_BROKER": redis_url}
    manifest = tmp_path / "v2.json"
    _snapshot("tests.apps.shop_v2", manifest, env)
    marker = tmp_path / "unpickled"
    # Unpickling this would create the marker file.
    boom = type("Boom", (), {"__reduce__": lambda self: (pathlib.Path.touch, (marker,))})()

    producer = Celery("producer", broker=redis_url, set_as_current=False)
    producer.send_task("shop.report", args=[3])  # a real JSON message: runs
    producer.send_task("shop.report", args=[boom], serializer="pickle")
    producer.send_task("shop.report", args=["x" * (20 * 1024 * 1024)])  # 20 MB: runs, oversized
    client = redis.Redis.from_url(redis_url)
    (real,) = [m for m in client.lrange("celery", 0, -1) if b"python-serialize" not in m and len(m) < 10_000]
    envelope = json.loads(real)

    def variant(**changes: object) -> bytes:
        return json.dumps({**envelope, **changes}).encode()

    hostile = [
        b"\x80 not even JSON",
        real[: len(real) // 2],  # truncated
        variant(body="%%% not base64 %%%"),
        variant(body=base64.b64encode(b"{corrupt json").decode()),
        variant(body=base64.b64encode(b"\xff\xfe invalid utf-8").decode()),
        variant(**{"content-type": "application/x-unknown"}),
        variant(headers=None),
        variant(headers=["not", "a", "table"]),
    ]
    client.lpush("celery", *hostile)
    before = {k: client.dump(k) for k in client.keys("*")}

    result = deploykit(
        "scan", "-b", redis_url, "--against", str(manifest), "--json", "--no-workers", "--no-beat", env=env
    )

    assert result.returncode == 0, result.stderr  # undecidable is reported, it does not block
    assert "Traceback" not in result.stderr
    doc = json.loads(result.stdout)
    assert doc["totals"]["scanned"] == 3 + len(hostile)
    assert doc["totals"]["runs"] == 2
    assert doc["totals"]["undecidable"] == 1 + len(hostile)
    reasons = " | ".join(doc["undecidable_reasons"])
    assert "never unpickled" in reasons and "not valid base64" in reasons
    assert doc["oversized"] == {"shop.report": 1}
    assert not marker.exists()
    assert {k: client.dump(k) for k in client.keys("*")} == before
