"""Benchmark: the cost of ``deploykit.celery.install`` on publishing: real ``apply_async`` on a
private redis-server, with and without stamping (target: at most 3 % slower).

Two apps with the same settings on the same broker, one installed: the publishes of the two are
interleaved in blocks (alternating which goes first) so both see the same machine load; each
round times ``PUBLISHES`` publishes of each, and the best of ``ROUNDS`` rounds is kept.

Run with ``make bench`` (or ``.venv/bin/python tests/bench/bench_stamping.py``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deploykit.demo.processes import start_redis
from tests.bench.common import write

PUBLISHES = int(os.environ.get("BENCH_PUBLISHES", "20000"))
ROUNDS = 3
BLOCK = 500
QUEUE = "bench"


def _app(name: str, url: str, build: str | None) -> Any:
    from celery import Celery

    from deploykit.celery import install

    app = Celery(name, broker=url, set_as_current=False)
    app.conf.update(task_default_queue=QUEUE, broker_connection_retry_on_startup=True)
    if build is not None:
        install(app, build=build, register=False)

    @app.task(name="bench.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    return add


def _block(task: Any, count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        task.apply_async((i, i))
    return time.perf_counter() - started


def main() -> None:
    import redis as redis_py

    server = start_redis()
    try:
        plain = _app("plain", server.url, None)
        stamped = _app("stamped", server.url, "2026.12.01-bench")
        client = redis_py.Redis.from_url(server.url)
        for task in (plain, stamped):  # connect and declare before timing
            _block(task, 100)
        rounds = []
        for _ in range(ROUNDS):
            client.delete(QUEUE)
            seconds = {"plain": 0.0, "stamped": 0.0}
            for n in range(PUBLISHES // BLOCK):
                order = (("plain", plain), ("stamped", stamped))
                for name, task in order if n % 2 == 0 else reversed(order):
                    seconds[name] += _block(task, BLOCK)
            rounds.append(seconds)
        stored = client.lrange(QUEUE, 0, 2 * BLOCK)  # a block of each variant
        assert any(b"deploykit_build" in m for m in stored), "the stamped app stamped nothing"
        assert not all(b"deploykit_build" in m for m in stored), "the plain app was stamped"
        client.delete(QUEUE)
        client.close()
        best = {name: min(r[name] for r in rounds) for name in ("plain", "stamped")}
        per = {name: round(best[name] / PUBLISHES * 1e6, 2) for name in best}
        slower = round((best["stamped"] / best["plain"] - 1) * 100, 2)
        write(
            "stamping",
            {
                "setup": (
                    f"apply_async on a private redis-server, {PUBLISHES} publishes per variant and round, "
                    f"interleaved in blocks of {BLOCK}, best of {ROUNDS} rounds"
                ),
                "publishes": PUBLISHES,
                "best_seconds": {name: round(value, 4) for name, value in best.items()},
                "microseconds_per_publish": per,
                "rounds": [{name: round(value, 4) for name, value in r.items()} for r in rounds],
                "stamped_slower_percent": slower,
                "targets": {"stamped_slower_percent_max": 3},
            },
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
