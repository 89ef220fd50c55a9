"""Fixtures that start real ``celery worker`` processes (always stopped afterwards)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploykit.demo.processes import WorkerProcess, start_worker, wait_for_workers

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.fixture
def start_workers(tmp_path: Path) -> Iterator[Callable[..., list[WorkerProcess]]]:
    """``start_workers(broker_url, [(nodename, queues), ...], **env)`` -> ready workers."""
    started: list[WorkerProcess] = []

    def start(
        broker_url: str,
        specs: list[tuple[str, tuple[str, ...]]],
        *,
        app: str = "tests.apps.basic",
        concurrency: int = 1,
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> list[WorkerProcess]:
        workers = [
            start_worker(
                app,
                nodename,
                queues=queues,
                concurrency=concurrency,
                env={"DEPLOYKIT_TEST_BROKER": broker_url, **(env or {})},
                cwd=ROOT,
                logdir=tmp_path,
                extra_args=extra_args,
            )
            for nodename, queues in specs
        ]
        started.extend(workers)
        wait_for_workers(workers)
        return workers

    yield start
    # Clean-up only: the test is over and its namespace (Redis database, RabbitMQ vhost, folder) is
    # thrown away next, so nothing needs a warm stop. SIGKILL to each worker's process group (the
    # pool's children too) ends it at once instead of costing a second or more per worker.
    for worker in started:
        worker.kill()
    for worker in started:
        worker.wait(10)
