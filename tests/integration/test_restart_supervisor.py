"""A rolling restart of 3 real workers under a real supervisord while a producer keeps sending.

Every task appends (id, worker, time) to a ledger file outside the broker. Afterwards: every id
ran exactly once, ETA tasks not before their ETA, and the JSON report matches supervisord's view.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import xmlrpc.client
from pathlib import Path

import pytest

from deploykit.orchestrate.adapters import supervisor_proxy
from tests.orchestrate.live import ROOT, control, deploykit, producer, result_json, wait_for

pytestmark = pytest.mark.integration

NODES = ("w1@dk", "w2@dk", "w3@dk")


def _config(tmp: Path, broker_url: str, ledger: Path) -> Path:
    programs = []
    for node in NODES:
        name = node.split("@")[0]
        programs.append(
            f"""
[program:{name}]
command={sys.executable} -m celery -A tests.apps.ledger worker -n {node} -c 1 -Q celery
    --without-mingle --without-gossip --loglevel INFO
directory={ROOT}
environment=DEPLOYKIT_TEST_BROKER="{broker_url}",DEPLOYKIT_TEST_LEDGER="{ledger}",PYTHONUNBUFFERED="1"
autostart=true
autorestart=unexpected
startsecs=1
stopsignal=TERM
stopwaitsecs=30
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile={tmp}/{name}.log
"""
        )
    conf = tmp / "supervisord.conf"
    conf.write_text(
        f"""
[unix_http_server]
file={tmp}/supervisor.sock

[supervisord]
logfile={tmp}/supervisord.log
pidfile={tmp}/supervisord.pid
childlogdir={tmp}
nodaemon=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
"""
        + "".join(programs)
    )
    return conf


@pytest.fixture
def supervised(redis_url, tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    conf = _config(tmp_path, redis_url, ledger)
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    url = f"unix://{tmp_path}/supervisor.sock"
    try:
        wait_for(lambda: (tmp_path / "supervisor.sock").exists(), timeout=20)
        wait_for(lambda: len(control(redis_url).ping(timeout=0.5) or []) == 3, timeout=60, interval=0.5)
        yield url, ledger
    finally:
        try:
            supervisor_proxy(url).supervisor.shutdown()
        except (OSError, xmlrpc.client.Error):
            proc.terminate()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_rolling_restart_under_supervisord_runs_every_task_exactly_once(redis_url, supervised):
    url, ledger = supervised
    proxy = supervisor_proxy(url)
    before = {i["name"]: i["pid"] for i in proxy.supervisor.getAllProcessInfo()}
    app = producer(redis_url)
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
            time.sleep(0.05)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)
        proc = deploykit(
            redis_url,
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
    finally:
        time.sleep(0.5)
        stop.set()
        thread.join()
    doc = result_json(proc)
    assert proc.returncode == 0, proc.stderr
    assert doc["schema"] == "deploykit.restart/1" and doc["status"] == "done"
    assert sorted(doc["restarted"]) == list(NODES)
    after = {i["name"]: i["pid"] for i in proxy.supervisor.getAllProcessInfo()}
    for batch in doc["batches"]:
        (restart,) = batch["restarts"]
        name = restart["worker"].split("@")[0]
        assert restart["target"] == name
        assert restart["old_pid"] == before[name] and restart["new_pid"] == after[name] != before[name]

    def lines() -> list[dict]:
        if not ledger.exists():
            return []
        return [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]

    wait_for(lambda: {e["id"] for e in lines()} >= set(sent), timeout=40, interval=0.5)
    entries = lines()
    ran = [e["id"] for e in entries]
    assert len(sent) > 50
    assert set(ran) == set(sent), "every task ran"
    duplicates = sorted({i for i in ran if ran.count(i) > 1})
    assert duplicates == [], "no task ran twice"
    for entry in entries:
        eta = sent[entry["id"]]
        if eta is not None:
            assert entry["time"] >= eta - 0.05, "ETA task ran early"
    assert {e["worker"] for e in entries} == set(NODES)
