"""Read the process-manager files that start Celery workers: supervisor, systemd, Kubernetes.

Only what decides whether a stop is a warm shutdown that can finish is extracted: the stop
signal, whether it goes to the whole process group, the time between the stop signal and SIGKILL
(supervisor ``stopwaitsecs``, systemd ``TimeoutStopSec``, Kubernetes
``terminationGracePeriodSeconds`` minus the preStop hook), and ``REMAP_SIGTERM``. A file that is
missing or cannot be parsed is a usage error (exit 2). Kubernetes manifests need PyYAML.
"""

from __future__ import annotations

import configparser
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from deploykit.doctor.model import ProcessManagerEntry
from deploykit.errors import UsageError

#: Defaults of each manager when the file does not say (supervisor docs, systemd.service(5),
#: Kubernetes PodSpec).
SUPERVISOR_STOPWAITSECS = 10.0
SYSTEMD_TIMEOUT_STOP = 90.0
K8S_GRACE_PERIOD = 30.0

_TRUE = {"true", "yes", "on", "1"}
_SYSTEMD_UNITS = {
    "us": 1e-6,
    "usec": 1e-6,
    "ms": 0.001,
    "msec": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
_SLEEP = re.compile(r"\bsleep\s+(\d+(?:\.\d+)?)")


def is_celery_worker(command: str | None) -> bool:
    """True for a command line that starts a Celery worker (``celery ... worker`` or ``multi``)."""
    if not command:
        return False
    return bool(re.search(r"\bcelery\b", command)) and bool(re.search(r"\b(worker|multi)\b", command))


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} file {path}: {exc}") from None


def _line_of(text: str, needle: str) -> int | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    return None


def _signal(value: str | None) -> str:
    return (value or "TERM").strip().upper().removeprefix("SIG") or "TERM"


# --------------------------------------------------------------------------------------------
# supervisor
def _supervisor_env(value: str | None) -> dict[str, str]:
    """``KEY="val",KEY2=val2`` (supervisor's environment syntax)."""
    env: dict[str, str] = {}
    if not value:
        return env
    lexer = shlex.shlex(value, posix=True)
    lexer.whitespace = ","
    lexer.whitespace_split = True
    try:
        for item in lexer:
            key, sep, val = item.strip().partition("=")
            if sep:
                env[key.strip()] = val
    except ValueError:
        pass
    return env


def parse_supervisor(path: Path) -> list[ProcessManagerEntry]:
    """Every ``[program:x]`` section that runs a Celery worker."""
    text = _read(path, "supervisor")
    parser = configparser.RawConfigParser(strict=False, inline_comment_prefixes=(";", "#"))
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        raise UsageError(f"{path} is not a valid supervisor configuration: {exc}") from None
    entries = []
    for section in parser.sections():
        kind, _, name = section.partition(":")
        if kind.strip() not in {"program", "fcgi-program"}:
            continue
        options = dict(parser.items(section))
        command = options.get("command")
        if not is_celery_worker(command):
            continue
        raw_wait = options.get("stopwaitsecs")
        try:
            wait = float(raw_wait) if raw_wait is not None else SUPERVISOR_STOPWAITSECS
        except ValueError:
            raise UsageError(f"{path} [{section}]: stopwaitsecs {raw_wait!r} is not a number") from None
        stopasgroup = (options.get("stopasgroup") or "false").strip().lower() in _TRUE
        entries.append(
            ProcessManagerEntry(
                kind="supervisor",
                path=str(path),
                name=f"program:{name.strip()}",
                command=command,
                stop_timeout=wait,
                stop_timeout_default=raw_wait is None,
                stop_timeout_setting="stopwaitsecs",
                stop_signal=_signal(options.get("stopsignal")),
                signals_group=stopasgroup,
                group_setting="stopasgroup=true" if stopasgroup else None,
                remap_sigterm=_supervisor_env(options.get("environment")).get("REMAP_SIGTERM"),
                line=_line_of(text, f"[{section}]"),
            )
        )
    return entries


# --------------------------------------------------------------------------------------------
# systemd
def parse_systemd_span(value: str) -> float | None:
    """A systemd time span (``90``, ``5min``, ``1h 30s``) in seconds; ``None`` for infinity."""
    value = value.strip().lower()
    if value in {"infinity", "0"}:
        return None  # 0 disables the timeout too (systemd.service(5))
    total = 0.0
    consumed = ""
    for number, unit in _SPAN.findall(value):
        if unit not in _SYSTEMD_UNITS and unit != "":
            raise ValueError(value)
        total += float(number) * _SYSTEMD_UNITS.get(unit, 1.0)
        consumed += number + unit
    if not consumed or consumed != value.replace(" ", ""):
        raise ValueError(value)
    return total


def _systemd_sections(text: str) -> dict[str, list[tuple[str, str, int]]]:
    sections: dict[str, list[tuple[str, str, int]]] = {}
    current = ""
    pending = ""
    pending_line = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if pending:
            line = pending + " " + line.strip()
        else:
            pending_line = number
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        pending = ""
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped[1:-1]
            sections.setdefault(current, [])
            continue
        key, sep, value = stripped.partition("=")
        if not sep:
            raise UsageError(f"line {number}: expected KEY=VALUE, got {stripped!r}")
        sections.setdefault(current, []).append((key.strip(), value.strip(), pending_line))
    return sections


def parse_systemd(path: Path) -> list[ProcessManagerEntry]:
    """The ``[Service]`` of a unit file, when its ExecStart runs a Celery worker."""
    text = _read(path, "systemd unit")
    try:
        sections = _systemd_sections(text)
    except UsageError as exc:
        raise UsageError(f"{path} is not a valid systemd unit: {exc.message}") from None
    service = sections.get("Service")
    if service is None:
        raise UsageError(f"{path} has no [Service] section: is it a systemd service unit?")
    last: dict[str, tuple[str, int]] = {}
    env: dict[str, str] = {}
    for key, value, line in service:
        last[key] = (value, line)
        if key == "Environment":
            for item in shlex.split(value):
                k, sep, v = item.partition("=")
                if sep:
                    env[k] = v
    command = last.get("ExecStart", ("", 0))[0]
    if not is_celery_worker(command):
        return []
    timeout_key = (
        "TimeoutStopSec" if "TimeoutStopSec" in last else "TimeoutSec" if "TimeoutSec" in last else None
    )
    if timeout_key:
        raw, line = last[timeout_key]
        try:
            stop_timeout = parse_systemd_span(raw)
        except ValueError:
            raise UsageError(f"{path}:{line}: {timeout_key}={raw!r} is not a time span") from None
    else:
        stop_timeout, line = SYSTEMD_TIMEOUT_STOP, _line_of(text, "[Service]") or 0
    kill_mode, kill_line = last.get("KillMode", ("control-group", 0))
    # With an ExecStop (celery multi stopwait) the worker is stopped by that command first.
    group = kill_mode.strip() == "control-group" and "ExecStop" not in last
    return [
        ProcessManagerEntry(
            kind="systemd",
            path=str(path),
            name=path.name,
            command=command,
            stop_timeout=stop_timeout,
            stop_timeout_default=timeout_key is None,
            stop_timeout_setting=timeout_key or "TimeoutStopSec",
            stop_signal=_signal(last.get("KillSignal", ("SIGTERM", 0))[0]),
            signals_group=group,
            group_setting=(
                ("KillMode=control-group" + ("" if kill_line else " (the default)")) if group else None
            ),
            remap_sigterm=env.get("REMAP_SIGTERM"),
            line=kill_line or line or None,
        )
    ]


# --------------------------------------------------------------------------------------------
# kubernetes
def _pod_specs(doc: Any) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if not isinstance(doc, Mapping):
        return
    kind = str(doc.get("kind") or "")
    name = str((doc.get("metadata") or {}).get("name") or "?")
    raw_spec = doc.get("spec")
    spec: Mapping[str, Any] = raw_spec if isinstance(raw_spec, Mapping) else {}
    if kind == "List":
        for item in doc.get("items") or []:
            yield from _pod_specs(item)
    elif kind == "Pod":
        yield f"Pod/{name}", spec
    elif kind == "CronJob":
        job = (spec.get("jobTemplate") or {}).get("spec") or {}
        yield f"CronJob/{name}", ((job.get("template") or {}).get("spec") or {})
    elif isinstance(spec.get("template"), Mapping):
        yield f"{kind or 'Object'}/{name}", (spec["template"].get("spec") or {})


def _prestop_seconds(lifecycle: Mapping[str, Any]) -> tuple[float, bool]:
    """Seconds the preStop hook takes, and whether that is only a guess (unknown)."""
    hook = lifecycle.get("preStop") if isinstance(lifecycle, Mapping) else None
    if not isinstance(hook, Mapping):
        return 0.0, False
    if isinstance(hook.get("sleep"), Mapping):
        return float(hook["sleep"].get("seconds") or 0), False
    command = (hook.get("exec") or {}).get("command") if isinstance(hook.get("exec"), Mapping) else None
    if isinstance(command, list):
        found = _SLEEP.findall(" ".join(str(c) for c in command))
        if found:
            return sum(float(n) for n in found), False
    return 0.0, True


def _shell_wrapped(argv: list[str]) -> bool:
    """``sh -c 'cd /app && celery worker'``: the shell stays PID 1 and may not forward SIGTERM."""
    if len(argv) < 3 or Path(argv[0]).name not in {"sh", "bash", "dash", "ash"} or argv[1] != "-c":
        return False
    script = argv[2]
    before = script.split("celery", 1)[0]
    compound = any(sep in script for sep in (";", "&&", "||", "|", "\n"))
    return compound and not re.search(r"\bexec\s*$", before.strip().split(";")[-1].split("&&")[-1] + " ")


def parse_kubernetes(path: Path) -> list[ProcessManagerEntry]:
    """Every container of a Pod, Deployment, StatefulSet, DaemonSet, Job… that runs a worker."""
    text = _read(path, "Kubernetes")
    try:
        import yaml
    except ImportError:
        raise UsageError(
            f"reading Kubernetes manifests ({path}) needs PyYAML, which is not installed: "
            "pip install 'deploykit[yaml]'"
        ) from None
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {exc}") from None
    entries = []
    for doc in docs:
        for owner, spec in _pod_specs(doc):
            raw_grace = spec.get("terminationGracePeriodSeconds")
            grace = float(raw_grace) if isinstance(raw_grace, (int, float)) else K8S_GRACE_PERIOD
            for container in spec.get("containers") or []:
                if not isinstance(container, Mapping):
                    continue
                argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
                command = " ".join(argv)
                if not is_celery_worker(command):
                    continue
                lifecycle = container.get("lifecycle") or {}
                prestop, unknown = _prestop_seconds(lifecycle)
                env = {
                    str(e.get("name")): str(e.get("value"))
                    for e in container.get("env") or []
                    if isinstance(e, Mapping) and "value" in e
                }
                cname = str(container.get("name") or "?")
                entries.append(
                    ProcessManagerEntry(
                        kind="kubernetes",
                        path=str(path),
                        name=f"{owner} container {cname}",
                        command=command,
                        stop_timeout=max(grace - prestop, 0.0),
                        stop_timeout_default=raw_grace is None,
                        stop_timeout_setting="terminationGracePeriodSeconds"
                        + (f" minus preStop {prestop:g}s" if prestop else ""),
                        stop_signal=_signal(
                            lifecycle.get("stopSignal") if isinstance(lifecycle, Mapping) else None
                        ),
                        prestop_seconds=None if unknown else prestop,
                        prestop_unknown=unknown,
                        remap_sigterm=env.get("REMAP_SIGTERM"),
                        shell_wrapped=_shell_wrapped(argv),
                        line=_line_of(text, f"name: {cname}"),
                    )
                )
    return entries


def read_process_managers(
    supervisor: Iterable[Path] = (), systemd: Iterable[Path] = (), kubernetes: Iterable[Path] = ()
) -> tuple[list[ProcessManagerEntry], list[str]]:
    """Parse every file; return the worker programs found and notes (files without a worker)."""
    entries: list[ProcessManagerEntry] = []
    notes: list[str] = []
    for paths, parse, what in (
        (supervisor, parse_supervisor, "supervisor program"),
        (systemd, parse_systemd, "systemd service"),
        (kubernetes, parse_kubernetes, "Kubernetes container"),
    ):
        for path in paths:
            found = parse(Path(path))
            if not found:
                notes.append(f"{path}: no {what} runs a Celery worker (command with 'celery … worker')")
            entries.extend(found)
    return entries, notes
