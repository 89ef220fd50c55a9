"""How ``restart`` starts a worker again: a command template, or supervisord's XML-RPC interface.

Both run only after deploykit has shut the worker down warmly itself (remote ``shutdown``), so the
adapter never decides how a worker stops — a process manager's ``stopsignal=KILL`` or a
``kubectl delete --grace-period=0`` cannot lose tasks here.
"""

from __future__ import annotations

import http.client
import shlex
import socket
import string
import subprocess
import time
import xmlrpc.client
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from deploykit.brokers.urls import mask_url
from deploykit.errors import DeploykitError, ExitCode, UsageError


class StartFailed(DeploykitError):
    """The adapter could not start a worker (exit 1: the rollout stops, the rest is untouched)."""

    exit_code = ExitCode.UNSAFE


@dataclass(frozen=True)
class WorkerRef:
    """A worker about to be restarted, as it was before the restart."""

    nodename: str
    pid: int | None
    queues: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.nodename.split("@", 1)[0]

    @property
    def hostname(self) -> str:
        return self.nodename.split("@", 1)[1] if "@" in self.nodename else self.nodename

    def placeholders(self) -> dict[str, str]:
        return {
            "nodename": self.nodename,
            "name": self.name,
            "hostname": self.hostname,
            "pid": "" if self.pid is None else str(self.pid),
            "queues": ",".join(self.queues),
        }


#: Placeholders a ``--exec`` template may use.
PLACEHOLDERS = ("nodename", "name", "hostname", "pid", "queues")


class Starter(ABC):
    """Starts a worker that deploykit has just shut down."""

    kind: str = ""

    @abstractmethod
    def target(self, worker: WorkerRef) -> str:
        """What will be started, for the plan (raises :class:`UsageError` if it cannot tell)."""

    @abstractmethod
    def start(self, worker: WorkerRef) -> None:
        """Start it; raise :class:`StartFailed` on failure. Returns once the start was requested."""


class ExecStarter(Starter):
    """Runs a command template (no shell unless the template says ``sh -c``)."""

    kind = "exec"

    def __init__(
        self,
        template: str,
        *,
        timeout: float = 120.0,
        run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    ) -> None:
        try:
            self.tokens = shlex.split(template)
        except ValueError as exc:
            raise UsageError(f"--exec: cannot parse the command template: {exc}") from None
        if not self.tokens:
            raise UsageError("--exec: empty command template")
        for token in self.tokens:
            for _, name, _, _ in string.Formatter().parse(token):
                if name is not None and name not in PLACEHOLDERS:
                    known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                    raise UsageError(f"--exec: unknown placeholder {{{name}}}; use {known}")
        self.timeout = timeout
        self._run = run

    def command(self, worker: WorkerRef) -> list[str]:
        values = worker.placeholders()
        return [token.format_map(values) for token in self.tokens]

    def target(self, worker: WorkerRef) -> str:
        return shlex.join(self.command(worker))

    def start(self, worker: WorkerRef) -> None:
        argv = self.command(worker)
        try:
            done = self._run(argv, capture_output=True, text=True, timeout=self.timeout, check=False)
        except FileNotFoundError:
            raise StartFailed(f"--exec: command not found: {argv[0]}") from None
        except subprocess.TimeoutExpired:
            raise StartFailed(f"--exec: {shlex.join(argv)} did not finish within {self.timeout:g}s") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout or "").strip().splitlines()[-3:]
            raise StartFailed(
                f"--exec: {shlex.join(argv)} exited {done.returncode}"
                + (f": {' / '.join(tail)}" if tail else "")
            )


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._socket_path = path
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixHTTPConnection(self._socket_path, self._timeout)


class _TimeoutTransport(xmlrpc.client.Transport):
    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        connection = super().make_connection(host)
        connection.timeout = self._timeout
        return connection


def supervisor_proxy(url: str, timeout: float = 10.0) -> Any:
    """An XML-RPC proxy for ``http://[user:pass@]host:port[/RPC2]`` or ``unix:///path/to.sock``."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        path = parts.path or parts.netloc
        return xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=_UnixTransport(path, timeout))
    if parts.scheme in ("http", "https"):
        full = url if parts.path not in ("", "/") else url.rstrip("/") + "/RPC2"
        return xmlrpc.client.ServerProxy(full, transport=_TimeoutTransport(timeout))
    raise UsageError(f"--supervisor: expected http://host:port or unix:///path.sock, got {mask_url(url)!r}")


#: supervisord fault codes (supervisor/xmlrpc.py ``Faults``).
ALREADY_STARTED = 60


@dataclass
class SupervisorStarter(Starter):
    """Drives supervisord: finds the program whose process is the worker, starts it again.

    The program is the one whose pid is the worker's (``stats().pid``, the MainProcess: run
    ``celery worker`` directly or through ``exec``, not under a shell), or ``programs[nodename]``.
    If supervisord restarted the program on its own (``autorestart=true``), nothing more is done.
    """

    url: str
    programs: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 30.0
    proxy: Any = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    kind: str = "supervisor"
    _resolved: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.proxy is None:
            self.proxy = supervisor_proxy(self.url)

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.proxy.supervisor, method)(*args)
        except xmlrpc.client.Fault:
            raise
        except (OSError, xmlrpc.client.ProtocolError) as exc:
            raise StartFailed(f"supervisord at {mask_url(self.url)} unreachable: {exc}") from None

    def target(self, worker: WorkerRef) -> str:
        if worker.nodename in self._resolved:
            return self._resolved[worker.nodename]
        name = self.programs.get(worker.nodename) or self.programs.get(worker.name)
        if name is None:
            infos = self._call("getAllProcessInfo")
            for info in infos:
                if worker.pid is not None and info.get("pid") == worker.pid:
                    group, proc = info.get("group"), info.get("name")
                    name = f"{group}:{proc}" if group and group != proc else str(proc)
                    break
        if name is None:
            raise UsageError(
                f"--supervisor: no supervisord program runs {worker.nodename} (pid {worker.pid}); "
                f"map it with --program {worker.nodename}=PROGRAM"
            )
        self._resolved[worker.nodename] = name
        return name

    def start(self, worker: WorkerRef) -> None:
        name = self.target(worker)
        deadline = self.clock() + self.timeout
        while True:
            try:
                info = self._call("getProcessInfo", name)
            except xmlrpc.client.Fault as fault:
                raise StartFailed(f"supervisord: {name}: {fault.faultString}") from None
            state = info.get("statename")
            if state in ("RUNNING", "STARTING") and info.get("pid") != worker.pid:
                return  # autorestart already brought it back
            if state not in ("RUNNING", "STOPPING", "STARTING"):
                break
            if self.clock() >= deadline:
                raise StartFailed(f"supervisord: {name} still {state} {self.timeout:g}s after the shutdown")
            self.sleep(0.2)
        try:
            self._call("startProcess", name, False)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != ALREADY_STARTED:
                raise StartFailed(f"supervisord could not start {name}: {fault.faultString}") from None


def parse_programs(items: Sequence[str]) -> dict[str, str]:
    """``--program NODE=PROGRAM`` options -> mapping."""
    mapping = {}
    for item in items:
        node, sep, program = item.partition("=")
        if not sep or not node or not program:
            raise UsageError(f"--program: expected NODE=PROGRAM, got {item!r}")
        mapping[node] = program
    return mapping
