"""Benchmark: drain reaction time and rolling-restart overhead, next to the copied preStop pattern.

* Reaction time: from the last in-flight task finishing (its own timestamp, written to a ledger)
  to ``deploykit drain`` exiting. The preStop pattern (as in celery/celery#6541: ``celery control
  cancel_consumer`` then ``celery inspect active`` every few seconds) is measured on the same fleet.
* Restart overhead: ``deploykit restart --supervisor … --batch 1`` of 3 idle workers, minus the sum
  of the three workers' own start times (supervisord start → answering ping). The preStop pattern
  plus ``supervisorctl restart`` of each worker, waiting until it answers, is timed the same way.

Run with ``make bench`` (or ``.venv/bin/python tests/bench/bench_drain.py``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deploykit.demo.processes import start_redis
from deploykit.orchestrate.adapters import supervisor_proxy
from tests.bench.common import ROOT, write
from tests.orchestrate.live import (
    cli_env,
    control,
    producer,
    start_supervisord,
    stop_supervisord,
    wait_for,
)

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
#: How often the copied preStop scripts poll (they use 2 to 60 s; "every few seconds").
PRESTOP_POLL = float(os.environ.get("BENCH_PRESTOP_POLL", "3"))
NODES = ("w1@bench", "w2@bench", "w3@bench")
PY = sys.executable


def _ledger_times(ledger: Path) -> dict[str, float]:
    if not ledger.exists():
        return {}
    return {e["id"]: e["time"] for e in map(json.loads, ledger.read_text().splitlines()) if e}


def _busy(url: str, ledger: Path, node: str, seconds: float = 1.5) -> str:
    task_id = str(
        producer(url).send_task("tests.apps.ledger.record", args=[seconds], queue=f"only-{node}").id
    )
    wait_for(
        lambda: (control(url).inspect(destination=[node], timeout=1).active() or {}).get(node), timeout=10
    )
    return task_id


def _celery(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "celery", "-A", "tests.apps.ledger", "-b", url, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=cli_env(url, DEPLOYKIT_TEST_BROKER=url),
        check=False,
    )


def prestop_drain(url: str, node: str, queues: list[str]) -> None:
    """The copied pattern: cancel_consumer, then poll `inspect active` until it is empty."""
    for queue in queues:
        _celery(url, "control", "cancel_consumer", queue, "-d", node)
    while True:
        out = _celery(url, "inspect", "active", "-d", node, "--json")
        try:
            if not json.loads(out.stdout or "{}").get(node):
                return
        except ValueError:
            return
        time.sleep(PRESTOP_POLL)


def reaction(url: str, ledger: Path) -> dict[str, object]:
    node = NODES[0]
    control(url).add_consumer(f"only-{node}", destination=[node], reply=True)
    time.sleep(0.5)
    deploykit_samples, prestop_samples = [], []
    for _ in range(RUNS):
        task_id = _busy(url, ledger, node)
        subprocess.run(
            [PY, "-m", "deploykit", "drain", "-w", node, "--json", "-q"],
            capture_output=True,
            cwd=ROOT,
            env=cli_env(url),
            check=True,
        )
        returned = time.time()
        deploykit_samples.append(returned - _ledger_times(ledger)[task_id])
        subprocess.run(
            [PY, "-m", "deploykit", "resume", "--json"],
            capture_output=True,
            cwd=ROOT,
            env=cli_env(url),
            check=True,
        )
        task_id = _busy(url, ledger, node)
        prestop_drain(url, node, ["celery", f"only-{node}"])
        returned = time.time()
        prestop_samples.append(returned - _ledger_times(ledger)[task_id])
        for queue in ("celery", f"only-{node}"):
            control(url).add_consumer(queue, destination=[node], reply=True)
        time.sleep(0.3)
    return {
        "deploykit_drain_s": _summary(deploykit_samples),
        "prestop_pattern_s": _summary(prestop_samples),
        "prestop_poll_interval_s": PRESTOP_POLL,
    }


def _summary(samples: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(samples), 3),
        "min": round(min(samples), 3),
        "max": round(max(samples), 3),
        "runs": len(samples),
    }


def _wait_answer(url: str, node: str, old_pid: int | None = None) -> None:
    def back() -> bool:
        stats = control(url).inspect(destination=[node], timeout=0.5).stats() or {}
        return node in stats and stats[node].get("pid") != old_pid

    wait_for(back, timeout=60, interval=0.05)


def restart(url: str, sock: str) -> dict[str, object]:
    proxy = supervisor_proxy(sock)
    starts = []
    for node in NODES:  # each worker's own start time: start -> answering
        name = node.split("@")[0]
        proxy.supervisor.stopProcess(name, True)
        started = time.monotonic()
        proxy.supervisor.startProcess(name, False)
        _wait_answer(url, node)
        starts.append(time.monotonic() - started)
    started = time.monotonic()
    done = subprocess.run(
        [PY, "-m", "deploykit", "restart", "--supervisor", sock, "--batch", "1", "--json", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=cli_env(url),
        check=False,
    )
    deploykit_total = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    started = time.monotonic()
    for node in NODES:  # preStop script + supervisorctl restart, one by one
        name = node.split("@")[0]
        prestop_drain(url, node, ["celery"])
        proxy.supervisor.stopProcess(name, True)
        proxy.supervisor.startProcess(name, False)
        _wait_answer(url, node)
    prestop_total = time.monotonic() - started
    start_sum = sum(starts)
    return {
        "workers": len(NODES),
        "worker_start_times_s": [round(s, 3) for s in starts],
        "sum_of_start_times_s": round(start_sum, 3),
        "deploykit_restart_s": round(deploykit_total, 3),
        "deploykit_overhead_s": round(deploykit_total - start_sum, 3),
        "prestop_pattern_restart_s": round(prestop_total, 3),
        "prestop_pattern_overhead_s": round(prestop_total - start_sum, 3),
    }


def main() -> None:
    redis = start_redis()
    tmp = Path(tempfile.mkdtemp(prefix="deploykit-bench-drain-"))
    ledger = tmp / "ledger.jsonl"
    proc, sock = start_supervisord(tmp, redis.url, ledger, NODES)
    try:
        react = reaction(redis.url, ledger)
        rolling = restart(redis.url, sock)
        write(
            "drain",
            {
                "fleet": "3 prefork -c 1 workers under supervisord, private redis-server",
                "reaction_time": react,
                "rolling_restart": rolling,
                "targets": {"reaction_median_s_max": 0.5},
            },
        )
    finally:
        stop_supervisord(proc, sock)
        redis.stop()


if __name__ == "__main__":
    main()
