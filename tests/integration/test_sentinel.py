"""``drain`` then ``resume`` from another machine, on a real Redis Sentinel.

The drain record must live in the broker (the Sentinel's master, under the app's
``global_keyprefix``), not in a local file: ``resume`` runs here from another working directory
with another ``$XDG_STATE_HOME``, as a later CI step on another runner would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from deploykit.demo.processes import free_port, redis_server_binary
from tests.cli import clean_env
from tests.orchestrate.live import wait_for

pytestmark = pytest.mark.integration

MASTER_NAME = "dk-master"
OPTIONS = {"master_name": MASTER_NAME, "global_keyprefix": "shop:"}
RECORD_KEY = "shop:deploykit:consumers:celery"


def _wait_for_ping(port: int) -> None:
    client = redis.Redis(port=port, socket_connect_timeout=1)
    try:
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis on port {port} did not start")
    finally:
        client.close()


@pytest.fixture(scope="module")
def sentinel() -> Iterator[tuple[int, int]]:
    """A private master on a private port, watched by a private ``redis-server --sentinel``.

    Yields ``(master port, sentinel port)``; both are stopped and their folder removed afterwards.
    """
    workdir = Path(tempfile.mkdtemp(prefix="deploykit-sentinel-"))
    binary = redis_server_binary()
    master_port, sentinel_port = free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    master = subprocess.Popen(
        [binary, "--port", str(master_port), *common],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config = workdir / "sentinel.conf"  # Sentinel rewrites its config file: it must be writable
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 1\n"
    )
    watcher = subprocess.Popen(
        [binary, str(config), "--sentinel", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_ping(master_port)
        _wait_for_ping(sentinel_port)
        yield master_port, sentinel_port
    finally:
        for process in (watcher, master):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()


def _deploykit(url: str, cwd: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(
        {
            "DEPLOYKIT_BROKER": url,
            "DEPLOYKIT_TRANSPORT_OPTIONS": json.dumps(OPTIONS),
            "XDG_STATE_HOME": str(state),
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "deploykit", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=90,
        check=False,
    )


def _document(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, f"rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _queues_of(url: str, cwd: Path, state: Path, node: str) -> list[str]:
    doc = _document(_deploykit(url, cwd, state, "workers", "--json"))
    (worker,) = [w for w in doc["workers"] if w["hostname"] == node]
    return sorted(worker["queues"])


def test_drain_then_resume_from_another_machine_through_the_sentinel_master(
    sentinel: tuple[int, int], start_workers: Any, tmp_path: Path
) -> None:
    master_port, sentinel_port = sentinel
    url = f"sentinel://127.0.0.1:{sentinel_port}/0"
    start_workers(
        url,
        [("w1@sentinel", ("celery", "emails")), ("w2@sentinel", ("celery",))],
        env={"DEPLOYKIT_TEST_TRANSPORT_OPTIONS": json.dumps(OPTIONS)},
    )
    here, there = tmp_path / "ci-step-1", tmp_path / "ci-step-2"
    for folder in (here, there, here / "state", there / "state"):
        folder.mkdir()

    drained = _document(_deploykit(url, here, here / "state", "drain", "--worker", "w1@*", "--json"))
    assert drained["status"] == "drained"
    assert sorted((c["worker"], c["queue"]) for c in drained["cancelled"]) == [
        ("w1@sentinel", "celery"),
        ("w1@sentinel", "emails"),
    ]
    assert drained["record"] == f"redis key {RECORD_KEY!r}"
    master = redis.Redis(port=master_port)
    try:
        fields = sorted(f.decode() for f in master.hkeys(RECORD_KEY))
        assert fields == ["w1@sentinel\x00celery", "w1@sentinel\x00emails"]
        assert 0 < int(master.ttl(RECORD_KEY)) <= 7 * 24 * 3600
        assert list((here / "state").rglob("*")) == []  # nothing written locally
        assert _queues_of(url, here, here / "state", "w1@sentinel") == []

        # Another machine: another working directory, another state folder, same broker.
        resumed = _document(_deploykit(url, there, there / "state", "resume", "--json"))
        assert resumed["status"] == "resumed", resumed
        assert sorted((r["worker"], r["queue"]) for r in resumed["restored"]) == [
            ("w1@sentinel", "celery"),
            ("w1@sentinel", "emails"),
        ]
        assert master.exists(RECORD_KEY) == 0
        wait_for(lambda: _queues_of(url, there, there / "state", "w1@sentinel") == ["celery", "emails"])
        assert _queues_of(url, there, there / "state", "w2@sentinel") == ["celery"]
    finally:
        master.close()
