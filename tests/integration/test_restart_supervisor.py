"""A rolling restart of 3 real workers under a real supervisord while a producer keeps sending.

Every task appends (id, worker, time) to a ledger file outside the broker. Afterwards: every id
ran exactly once, ETA tasks not before their ETA, and the JSON report matches supervisord's view.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from deploykit.orchestrate.adapters import supervisor_proxy
from tests.orchestrate.live import (
    deploykit,
    producer,
    result_json,
    start_supervisord,
    stop_supervisord,
    wait_for,
)

pytestmark = pytest.mark.integration

NODES = ("w1@dk", "w2@dk", "w3@dk")


@pytest.fixture
def supervised(redis_url, tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    proc, url = start_supervisord(tmp_path, redis_url, ledger, NODES)
    try:
        yield url, ledger
    finally:
        stop_supervisord(proc, url)


@pytest.mark.faults  # a soak (20-50 s each): `make test-faults`; `make test` keeps the deploy test below
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_rolling_restart_under_supervisord_runs_every_task_exactly_once(broker, request, tmp_path):
    broker_url = request.getfixturevalue("redis_url" if broker == "redis" else "rabbitmq_url")
    ledger = tmp_path / "ledger.jsonl"
    proc, url = start_supervisord(tmp_path, broker_url, ledger, NODES)
    try:
        _rolling_restart(broker_url, url, ledger, passes=2 if broker == "redis" else 1)
    finally:
        stop_supervisord(proc, url)


def _rolling_restart(broker_url: str, url: str, ledger: Path, passes: int) -> None:
    proxy = supervisor_proxy(url)
    before = {i["name"]: i["pid"] for i in proxy.supervisor.getAllProcessInfo()}
    app = producer(broker_url)
    sent: dict[str, float | None] = {}  # id -> ETA (unix time) or None
    stop = threading.Event()

    def produce() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            name = "tests.apps.ledger.record_late" if n % 3 == 0 else "tests.apps.ledger.record"
            duration = (0.0, 0.1, 0.3, 0.6)[n % 4]
            if n % 5 == 0:
                countdown = 2 + (n % 4)
                eta = time.time() + countdown
                result = app.send_task(name, args=[duration], countdown=countdown)
                sent[result.id] = eta
            else:
                result = app.send_task(name, args=[duration], priority=n % 10)
                sent[result.id] = None
            time.sleep(0.12)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)
        runs = []
        for _ in range(passes):  # roll the whole fleet through, several times
            runs.append(
                deploykit(
                    broker_url,
                    "restart",
                    "--supervisor",
                    url,
                    "--batch",
                    "1",
                    "--min-consumers",
                    "1",
                    "--start-timeout",
                    "60s",
                    "--json",
                    timeout=240,
                )
            )
    finally:
        time.sleep(0.5)
        stop.set()
        thread.join()
    pids = before
    for proc in runs:
        doc = result_json(proc)
        assert proc.returncode == 0, proc.stderr
        assert doc["schema"] == "deploykit.restart/1" and doc["status"] == "done"
        assert sorted(doc["restarted"]) == list(NODES)
        for batch in doc["batches"]:
            (restart,) = batch["restarts"]
            name = restart["worker"].split("@")[0]
            assert restart["target"] == name
            assert restart["old_pid"] == pids[name] != restart["new_pid"]
        pids = {b["restarts"][0]["worker"].split("@")[0]: b["restarts"][0]["new_pid"] for b in doc["batches"]}
    after = {i["name"]: i["pid"] for i in proxy.supervisor.getAllProcessInfo()}
    assert after == pids  # the JSON report matches supervisord's view

    def lines() -> list[dict]:
        if not ledger.exists():
            return []
        return [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]

    wait_for(lambda: {e["id"] for e in lines()} >= set(sent), timeout=40, interval=0.5)
    entries = lines()
    ran = [e["id"] for e in entries]
    assert len(sent) > 40
    assert set(ran) == set(sent), "every task ran"
    duplicates = sorted({i for i in ran if ran.count(i) > 1})
    assert duplicates == [], "no task ran twice"
    for entry in entries:
        eta = sent[entry["id"]]
        if eta is not None:
            assert entry["time"] >= eta - 0.05, "ETA task ran early"
    assert {e["worker"] for e in entries} == set(NODES)


def test_deploy_stops_everyone_runs_the_command_and_waits_for_the_new_workers(redis_url, supervised):
    url, ledger = supervised
    app = producer(redis_url)
    held = [app.send_task("tests.apps.ledger.record", args=[0.0], countdown=3).id for _ in range(3)]
    time.sleep(0.5)
    proc = deploykit(
        redis_url,
        "deploy",
        "--run",
        f"{sys.executable} -m supervisor.supervisorctl -s {url} restart all",
        "--wait-timeout",
        "60s",
        "--json",
        timeout=180,
    )
    doc = result_json(proc)
    assert proc.returncode == 0, proc.stderr
    assert doc["schema"] == "deploykit.deploy/1" and doc["status"] == "done"
    assert sorted(doc["stopped"]) == sorted(doc["new_workers"]) == ["w1@dk", "w2@dk", "w3@dk"]
    assert doc["shutdown"]["returned"] == doc["shutdown"]["held"] == 3
    assert doc["command_exit"] == 0

    def ran() -> set[str]:
        return (
            {json.loads(line)["id"] for line in ledger.read_text().splitlines()} if ledger.exists() else set()
        )

    wait_for(lambda: ran() >= set(held), timeout=20)  # the ETA tasks the old workers held ran on the new ones
