"""Process-manager files written by the tests, parsed, and the findings they lead to."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from deploykit.doctor.checks import run_checks
from deploykit.doctor.model import Audit, ConfigSource
from deploykit.doctor.process_managers import (
    parse_kubernetes,
    parse_supervisor,
    parse_systemd,
    parse_systemd_span,
    read_process_managers,
)
from deploykit.errors import UsageError

SUPERVISOR = """\
[supervisord]
nodaemon = true

[program:web]
command = gunicorn proj.wsgi

[program:celery-default]
command = celery -A proj worker -Q celery -c 4 ; the main queue
stopasgroup = true
killasgroup = true

[program:celery-long]
command = /venv/bin/celery -A proj worker -Q long
stopwaitsecs = 3600
stopsignal = KILL
environment = DJANGO_SETTINGS_MODULE="proj.settings",REMAP_SIGTERM="SIGQUIT"
"""

SYSTEMD = """\
[Unit]
Description=Celery workers

[Service]
Type=simple
Environment="REMAP_SIGTERM=SIGQUIT" "OTHER=1"
ExecStart=/venv/bin/celery -A proj worker \\
    --loglevel INFO
TimeoutStopSec=1min 30s
"""

K8S = """\
apiVersion: v1
kind: Service
metadata: {name: web}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: workers}
spec:
  template:
    spec:
      terminationGracePeriodSeconds: 120
      containers:
        - name: worker
          image: proj:1
          command: ["sh", "-c", "cd /app && celery -A proj worker"]
          lifecycle:
            preStop:
              exec: {command: ["sh", "-c", "sleep 15"]}
        - name: sidecar
          image: envoy
---
apiVersion: v1
kind: Pod
metadata: {name: one}
spec:
  containers:
    - name: w
      command: ["celery", "-A", "proj", "worker"]
      lifecycle: {preStop: {httpGet: {path: /drain, port: 8080}}}
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_supervisor_programs(tmp_path: Path) -> None:
    entries = parse_supervisor(_write(tmp_path, "celery.conf", SUPERVISOR))
    assert [e.name for e in entries] == ["program:celery-default", "program:celery-long"]
    default, long = entries
    assert default.stop_timeout == 10.0 and default.stop_timeout_default
    assert default.signals_group and default.group_setting == "stopasgroup=true"
    assert default.stop_signal == "TERM" and default.line == 7
    assert long.stop_timeout == 3600.0 and not long.stop_timeout_default and not long.signals_group
    assert long.stop_signal == "KILL" and long.remap_sigterm == "SIGQUIT"


def test_supervisor_killasgroup_alone_is_fine(tmp_path: Path) -> None:
    text = "[program:w]\ncommand = celery -A proj worker\nkillasgroup = true\nstopwaitsecs = 600\n"
    (entry,) = parse_supervisor(_write(tmp_path, "w.conf", text))
    assert not entry.signals_group


def test_systemd_unit_defaults_to_control_group(tmp_path: Path) -> None:
    (entry,) = parse_systemd(_write(tmp_path, "celery.service", SYSTEMD))
    assert entry.name == "celery.service"
    assert entry.stop_timeout == 90.0 and not entry.stop_timeout_default
    assert entry.signals_group and entry.group_setting == "KillMode=control-group (the default)"
    assert entry.remap_sigterm == "SIGQUIT"
    assert "--loglevel INFO" in (entry.command or "")


def test_systemd_mixed_kill_mode_and_infinity(tmp_path: Path) -> None:
    text = (
        "[Service]\nExecStart=celery -A p worker\nKillMode=mixed\nTimeoutStopSec=infinity\n"
        "KillSignal=SIGINT\n"
    )
    (entry,) = parse_systemd(_write(tmp_path, "w.service", text))
    assert not entry.signals_group and entry.stop_timeout is None and entry.stop_signal == "INT"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("5min", 300.0), ("1h 30s", 3630.0), ("500ms", 0.5), ("infinity", None)],
)
def test_systemd_spans(text: str, seconds: float | None) -> None:
    assert parse_systemd_span(text) == seconds


def test_kubernetes_grace_minus_prestop(tmp_path: Path) -> None:
    entries = parse_kubernetes(_write(tmp_path, "k8s.yaml", K8S))
    assert [e.name for e in entries] == ["Deployment/workers container worker", "Pod/one container w"]
    deployment, pod = entries
    assert deployment.stop_timeout == 105.0 and deployment.prestop_seconds == 15.0
    assert deployment.shell_wrapped
    assert pod.stop_timeout == 30.0 and pod.stop_timeout_default and pod.prestop_unknown
    assert not pod.shell_wrapped


def test_findings_from_files(tmp_path: Path) -> None:
    entries, notes = read_process_managers(
        [_write(tmp_path, "celery.conf", SUPERVISOR)],
        [_write(tmp_path, "celery.service", SYSTEMD)],
        [_write(tmp_path, "k8s.yaml", K8S)],
    )
    app = ConfigSource("app", {"task_time_limit": 600, "task_acks_late": False}, frozenset())
    found = run_checks(Audit(broker_kind=None, app=app, process_managers=tuple(entries)))
    by_id: dict[str, list[str]] = {}
    for f in found:
        by_id.setdefault(f.rule, []).extend(f.where)
    assert any("celery-default" in w for w in by_id["STOP_TIMEOUT_BELOW_TASK_TIME"])
    assert any("celery.service" in w for w in by_id["STOP_TIMEOUT_BELOW_TASK_TIME"])
    assert any("Deployment/workers" in w for w in by_id["STOP_TIMEOUT_BELOW_TASK_TIME"])
    assert not any("celery-long" in w for w in by_id["STOP_TIMEOUT_BELOW_TASK_TIME"])
    assert any("celery-default" in w for w in by_id["PROCESS_GROUP_SIGNAL"])
    assert any("celery.service" in w for w in by_id["PROCESS_GROUP_SIGNAL"])
    assert any("celery-long" in w for w in by_id["SIGKILL_STOP_SIGNAL"])
    assert any("celery.service" in w for w in by_id["COLD_STOP_SIGNAL"])
    assert any("Deployment/workers" in w for w in by_id["SHELL_WRAPPED_WORKER"])
    stop = next(
        f for f in found if f.rule == "STOP_TIMEOUT_BELOW_TASK_TIME" and "celery-default" in f.where[0]
    )
    assert stop.file and stop.file.endswith("celery.conf") and stop.line == 7
    assert notes == []


def test_file_without_a_worker_is_a_note(tmp_path: Path) -> None:
    entries, notes = read_process_managers(
        [_write(tmp_path, "web.conf", "[program:web]\ncommand = gunicorn x\n")]
    )
    assert entries == [] and "no supervisor program runs a Celery worker" in notes[0]


@pytest.mark.parametrize(
    ("parser", "text", "message"),
    [
        (parse_supervisor, "[program:w\ncommand = celery worker\n", "not a valid supervisor"),
        (parse_supervisor, "[program:w]\ncommand = celery worker\nstopwaitsecs = soon\n", "not a number"),
        (parse_systemd, "[Unit]\nDescription=x\n", r"no \[Service\] section"),
        (parse_systemd, "[Service]\nExecStart=celery worker\nTimeoutStopSec=later\n", "not a time span"),
        (parse_kubernetes, "kind: Pod\nspec: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_files_are_usage_errors(tmp_path: Path, parser, text: str, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match=message):
        parser(_write(tmp_path, "bad", text))


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        parse_supervisor(tmp_path / "nope.conf")


def test_kubernetes_without_pyyaml_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(UsageError, match="needs PyYAML"):
        parse_kubernetes(_write(tmp_path, "k8s.yaml", K8S))


def test_supervisor_reading_matches_supervisord_itself(tmp_path: Path) -> None:
    """The same file through supervisor's own parser: a real config, read the same way."""
    options_module = pytest.importorskip("supervisor.options")
    import signal

    path = _write(tmp_path, "supervisord.conf", SUPERVISOR)
    options = options_module.ServerOptions()
    options.configfile = str(path)
    options.process_config(do_usage=False)
    real = {pc.name: pc for group in options.process_group_configs for pc in group.process_configs}
    ours = {e.name.removeprefix("program:"): e for e in parse_supervisor(path)}
    assert set(ours) == {"celery-default", "celery-long"} and set(ours) < set(real)
    for name, entry in ours.items():
        assert entry.stop_timeout == real[name].stopwaitsecs
        assert entry.signals_group == real[name].stopasgroup
        assert getattr(signal, "SIG" + (entry.stop_signal or "TERM")) == real[name].stopsignal
        assert entry.remap_sigterm == (real[name].environment or {}).get("REMAP_SIGTERM")
