"""Benchmark: ``deploykit status --json`` vs the Celery CLI calls that give the same information,
on the same live fleet of 2 workers; and ``deploykit --help`` vs ``celery --help`` start-up.

Run with ``make bench`` (or ``.venv/bin/python tests/bench/bench_status.py``).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deploykit.demo.processes import start_redis, start_worker, wait_for_workers
from tests.bench.common import ROOT, time_command, write

RUNS = int(os.environ.get("BENCH_RUNS", "10"))


def main() -> None:
    redis = start_redis()
    env = {**os.environ, "DEPLOYKIT_TEST_BROKER": redis.url, "NO_COLOR": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("DEPLOYKIT_") or k == "DEPLOYKIT_TEST_BROKER"}
    workers = [
        start_worker("tests.apps.basic", "w1@bench", queues=["celery"], env=env, cwd=ROOT),
        start_worker("tests.apps.basic", "w2@bench", queues=["celery", "emails"], env=env, cwd=ROOT),
    ]
    try:
        wait_for_workers(workers)
        from celery import Celery

        producer = Celery("p", broker=redis.url, set_as_current=False)
        for i in range(4):
            producer.send_task("tests.apps.basic.add", args=[i, i], countdown=600)
        for _ in range(2):
            producer.send_task("tests.apps.basic.sleep", args=[600])
        time.sleep(1.5)

        py = sys.executable
        celery = [py, "-m", "celery", "-A", "tests.apps.basic"]
        deploykit_status = time_command(
            [py, "-m", "deploykit", "status", "--json", "-b", redis.url, "-A", "tests.apps.basic"],
            env=env,
            runs=RUNS,
        )
        redis_cli = shutil.which("redis-cli")
        depth = (
            [redis_cli, "-p", str(redis.port), "llen", "celery"]
            if redis_cli
            else [py, "-c", f"import redis; print(redis.Redis.from_url('{redis.url}').llen('celery'))"]
        )
        celery_calls = {
            name: time_command([*celery, "inspect", name, "--json"], env=env, runs=RUNS)
            for name in ("active", "reserved", "scheduled", "active_queues")
        }
        celery_calls["queue depth (" + ("redis-cli llen" if redis_cli else "redis-py llen") + ")"] = (
            time_command(depth, env=env, runs=RUNS)
        )
        celery_total = round(sum(c["median_s"] for c in celery_calls.values()), 4)

        help_deploykit = time_command([py, "-m", "deploykit", "--help"], env=env, runs=max(RUNS, 20))
        help_celery = time_command([py, "-m", "celery", "--help"], env=env, runs=max(RUNS, 20))
        write(
            "status",
            {
                "fleet": "2 prefork workers on a private redis-server, 4 ETA + 2 running tasks",
                "deploykit_status_json": deploykit_status,
                "celery_cli": {"calls": celery_calls, "sum_of_medians_s": celery_total},
                "speedup": round(celery_total / deploykit_status["median_s"], 1),
                "targets": {"status_median_s_max": 0.5, "speedup_min": 10, "help_median_s_max": 0.15},
                "deploykit_help": help_deploykit,
                "celery_help": help_celery,
            },
        )
    finally:
        for worker in workers:
            worker.stop(timeout=20)
        redis.stop()


if __name__ == "__main__":
    main()
