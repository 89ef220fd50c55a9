"""Helpers for the orchestration integration tests: run the real CLI, send tasks, read Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def cli_env(broker_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYKIT_")}
    env.update({"DEPLOYKIT_BROKER": broker_url, "NO_COLOR": "1", **extra})
    return env


def deploykit(
    broker_url: str, *args: str, timeout: float = 90, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploykit", *args],
        capture_output=True,
        text=True,
        env=cli_env(broker_url, **env),
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def deploykit_bg(broker_url: str, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "deploykit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(broker_url, **env),
        cwd=ROOT,
    )


def result_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        return json.loads(proc.stdout)  # type: ignore[no-any-return]
    except ValueError as exc:
        raise AssertionError(
            f"no JSON on stdout (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        ) from exc


_producers: dict[str, Any] = {}


def producer(broker_url: str) -> Any:
    from celery import Celery

    if broker_url not in _producers:
        _producers[broker_url] = Celery("producer", broker=broker_url, set_as_current=False)
    return _producers[broker_url]


def send(broker_url: str, name: str, args: tuple[Any, ...] = (), **options: Any) -> str:
    return str(producer(broker_url).send_task(name, args=list(args), **options).id)


def control(broker_url: str) -> Any:
    return producer(broker_url).control


def active_queues(broker_url: str, node: str) -> list[str] | None:
    reply = control(broker_url).inspect(destination=[node], timeout=2).active_queues() or {}
    if node not in reply:
        return None
    return sorted(q["name"] for q in reply[node])


def wait_for(predicate: Callable[[], Any], timeout: float = 20, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def succeeded(log: str) -> int:
    return log.count(" succeeded in ")
