"""Faults during a drain on real processes: the broker restarts under it."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import redis

from deploykit.demo.processes import free_port, redis_server_binary
from tests.orchestrate.live import (
    active_queues,
    deploykit,
    deploykit_bg,
    forget_connections,
    send,
    succeeded,
    wait_for,
)

# `make test-faults`: a broker restart under a running drain is a fault drill, not a unit of the
# everyday suite (which has drain/resume on Redis and RabbitMQ).
pytestmark = [pytest.mark.integration, pytest.mark.faults]


def _redis_server(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    wait_for(lambda: _pong(client), timeout=10)
    return proc


def _pong(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_drain_rides_out_a_broker_restart_and_resume_still_works(tmp_path, start_workers):
    port = free_port()
    server = _redis_server(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        (w1,) = start_workers(url, [("w1@dk", ("celery",))])
        send(url, "tests.apps.basic.sleep", (6,))
        wait_for(lambda: "] received" in w1.log())
        proc = deploykit_bg(url, "drain", "--timeout", "60s", "--json")
        wait_for(lambda: active_queues(url, "w1@dk") == [], timeout=20)

        server.terminate()  # a clean broker restart (AOF keeps the queues and deploykit's record)
        server.wait(10)
        time.sleep(1.0)
        server = _redis_server(port, tmp_path)
        forget_connections()  # the test's own producer connection died with the old server

        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        doc = json.loads(out)
        assert doc["status"] == "drained", doc
        assert any("lost the broker" in note for note in doc["notes"])
        assert succeeded(w1.log()) == 1
        assert active_queues(url, "w1@dk") == []  # still quiet after reconnecting

        resumed = deploykit(url, "resume", "--json")
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["restored"] == [{"worker": "w1@dk", "queue": "celery"}]
        assert active_queues(url, "w1@dk") == ["celery"]
    finally:
        server.terminate()
        server.wait(10)
