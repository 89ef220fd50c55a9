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
    # Clean-up only (the namespace is thrown away next): a short warm stop, then SIGKILL, so a
    # test that leaves a long task running does not cost its whole duration here.
    for worker in started:
        worker.terminate()
    for worker in started:
        worker.stop(timeout=5)
