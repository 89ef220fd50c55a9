"""Helpers for the orchestration integration tests: run the real CLI, send tasks, read Redis."""

from __future__ import annotations

import json
import os
import signal
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
    """The command's ``--json`` document, validated against its schema in ``schemas/``."""
    from tests.output.shapes import validate

    try:
        document: dict[str, Any] = json.loads(proc.stdout)
    except ValueError as exc:
        raise AssertionError(
            f"no JSON on stdout (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        ) from exc
    validate(document)
    return document


_producers: dict[str, Any] = {}


def producer(broker_url: str) -> Any:
    from celery import Celery

    if broker_url not in _producers:
        _producers[broker_url] = Celery("producer", broker=broker_url, set_as_current=False)
    return _producers[broker_url]


def forget_connections() -> None:
    """Drop the cached producer apps (after a broker restart their connections are dead)."""
    from kombu import pools

    _producers.clear()
    pools.reset()


def send(broker_url: str, name: str, args: tuple[Any, ...] = (), **options: Any) -> str:
    return str(producer(broker_url).send_task(name, args=list(args), **options).id)


def control(broker_url: str) -> Any:
    return producer(broker_url).control


def active_queues(broker_url: str, node: str) -> list[str] | None:
    for attempt in range(3):  # pooled connections may be stale after a broker restart
        try:
            reply = control(broker_url).inspect(destination=[node], timeout=2).active_queues() or {}
            break
        except Exception:
            if attempt == 2:
                raise
            forget_connections()
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


def supervisord_config(tmp: Path, broker_url: str, ledger: Path, nodes: tuple[str, ...]) -> Path:
    """A supervisord.conf (unix socket in ``tmp``) running one ``tests.apps.ledger`` worker per node."""
    programs = []
    for node in nodes:
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


def start_supervisord(tmp: Path, broker_url: str, ledger: Path, nodes: tuple[str, ...]) -> tuple[Any, str]:
    """Start supervisord in the foreground (a child process); wait until every worker answers."""
    conf = supervisord_config(tmp, broker_url, ledger, nodes)
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp,
    )
    url = f"unix://{tmp}/supervisor.sock"
    try:
        wait_for(lambda: (tmp / "supervisor.sock").exists(), timeout=20)
        wait_for(
            lambda: len(control(broker_url).ping(timeout=0.5) or []) == len(nodes), timeout=60, interval=0.5
        )
    except BaseException:
        stop_supervisord(proc, url)
        raise
    return proc, url


def stop_supervisord(proc: Any, url: str) -> None:
    """Clean-up once a test is done with the fleet: supervisord shuts down, and its workers are
    SIGKILLed at once rather than warm-stopped (each runs in its own process group, which
    supervisord sets up for ``killasgroup``), so no test waits out their running tasks."""
    import xmlrpc.client

    from deploykit.orchestrate.adapters import supervisor_proxy

    try:
        proxy = supervisor_proxy(url)
        groups = [info["pid"] for info in proxy.supervisor.getAllProcessInfo() if info["pid"]]
        proxy.supervisor.shutdown()  # from now on it restarts nothing
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    except (OSError, xmlrpc.client.Error):
        proc.terminate()
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
