"""The CLI contract: one line on stderr, the documented exit code, no traceback, no password."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from deploykit.cli import app
from deploykit.errors import (
    DeploykitError,
    ExitCode,
    Incomplete,
    Interrupted,
    Refused,
    TimedOut,
    Unavailable,
    UnsafeError,
    UsageError,
)

runner = CliRunner()


def test_exit_code_table_is_the_documented_one():
    assert {e.name: int(e) for e in ExitCode} == {
        "OK": 0,
        "UNSAFE": 1,
        "USAGE": 2,
        "TIMEOUT": 3,
        "REFUSED": 4,
        "INCOMPLETE": 5,
        "UNAVAILABLE": 69,
        "INTERNAL": 70,
        "INTERRUPTED": 130,
    }
    assert [
        c.exit_code
        for c in (UnsafeError, UsageError, TimedOut, Refused, Incomplete, Unavailable, Interrupted)
    ] == [1, 2, 3, 4, 5, 69, 130]
    assert issubclass(Refused, DeploykitError)


def test_help_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("workers", "queues", "scheduled", "status"):
        assert command in result.output
    assert runner.invoke(app, ["--version"]).output.startswith("deploykit ")


@pytest.mark.parametrize("command", ["workers", "queues", "scheduled", "status"])
def test_unknown_scheme_is_exit_2_and_masks_password(command):
    result = runner.invoke(app, [command, "-b", "weird://user:topsecret@host/0"])
    assert result.exit_code == 2
    assert "unknown broker URL scheme 'weird'" in result.output
    assert "topsecret" not in result.output
    assert "Traceback" not in result.output


def test_options_before_the_command_apply(monkeypatch):
    for key in ("DEPLOYKIT_BROKER", "DEPLOYKIT_APP", "CELERY_BROKER_URL"):
        monkeypatch.delenv(key, raising=False)
    result = runner.invoke(app, ["-b", "weird://h/0", "status"])
    assert result.exit_code == 2 and "weird" in result.output


# -- bugs never hide: exit 70, the traceback, an invitation to report, no password -------------
SECRET = "hunter2-Zq9"


def test_a_bug_is_exit_70_with_a_traceback_and_an_invitation_without_the_password(monkeypatch):
    from deploykit.cli import common

    def broken(*args, **kwargs):
        raise RuntimeError(f"boom while reading amqp://app:{SECRET}@mq// (password {SECRET})")

    monkeypatch.setattr(common, "resolve_settings", broken)
    result = runner.invoke(app, ["status", "-b", f"amqp://app:{SECRET}@mq//"])
    assert result.exit_code == ExitCode.INTERNAL == 70
    out = result.output
    assert "deploykit: internal error: RuntimeError: boom while reading amqp://app:***@mq//" in out
    assert "Traceback (most recent call last)" in out and "in broken" in out
    assert common.ISSUES_URL in out and "bug in deploykit" in out
    assert SECRET not in out


def test_main_reports_a_bug_outside_any_command_as_exit_70(monkeypatch, capsys):
    import deploykit.cli as cli

    def broken() -> None:
        raise ValueError(f"outside: redis://:{SECRET}@h/0")

    monkeypatch.setattr(cli, "app", broken)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 70
    err = capsys.readouterr().err
    assert "internal error: ValueError" in err and "Traceback" in err and SECRET not in err


class _Connection:
    """A kombu-like connection: the transport's error lists, and an ``ensure_connection`` that raises."""

    def __init__(
        self, raises: BaseException, connection_errors: tuple[type[BaseException], ...] = ()
    ) -> None:
        self.raises = raises
        self.connection_errors = connection_errors
        self.channel_errors = ()

    def ensure_connection(self, **kwargs):
        raise self.raises

    def release(self) -> None:
        pass


class _App:
    def __init__(self, connection: _Connection) -> None:
        self.connection = connection

    def connection_for_write(self) -> _Connection:
        return self.connection


@pytest.mark.parametrize(
    "raised",
    [
        TypeError("a deploykit bug"),
        KeyError("kombu lists KeyError among redis connection errors: still a bug"),
        AttributeError("'NoneType' object has no attribute 'default_channel'"),
    ],
)
def test_fleet_lets_a_bug_through_instead_of_calling_it_unreachable(raised):
    from deploykit.fleet.control import CeleryFleet

    fleet = CeleryFleet(
        _App(_Connection(raised, (KeyError, ConnectionRefusedError))), timeout=1, display_url="x"
    )
    with pytest.raises(type(raised)):
        fleet.ping()


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        ("operational", Unavailable),
        (ConnectionRefusedError(111, "Connection refused"), Unavailable),
        (FileNotFoundError(2, "No such file or directory", "/nope"), UsageError),
    ],
)
def test_fleet_translates_library_connection_errors(raised, expected):
    from kombu.exceptions import OperationalError

    from deploykit.fleet.control import CeleryFleet

    if raised == "operational":
        raised = OperationalError(f"Error 111 connecting to redis://:{SECRET}@h:6379/0. Connection refused.")
    fleet = CeleryFleet(_App(_Connection(raised)), timeout=1, display_url="redis://:***@h:6379/0")
    with pytest.raises(expected) as caught:
        fleet.ping()
    assert SECRET not in caught.value.message


def test_library_errors_never_include_builtins_other_than_oserror():
    from deploykit.fleet.control import library_errors

    errors = library_errors(_Connection(TypeError(), (KeyError, ConnectionRefusedError)))
    assert KeyError not in errors and OSError in errors


def test_rabbitmq_broker_lets_a_bug_in_a_declare_through():
    import httpx

    from deploykit.brokers.rabbitmq import RabbitMQBroker

    class BuggyProber:
        def declare(self, name):
            raise TypeError("a deploykit bug")

        def close(self) -> None:
            pass

    class ResetProber(BuggyProber):
        def declare(self, name):
            raise ConnectionResetError(104, "Connection reset by peer")

    api = httpx.MockTransport(lambda request: httpx.Response(200, json={"items": [], "page_count": 1}))
    for prober, expected in ((BuggyProber(), TypeError), (ResetProber(), Unavailable)):
        broker = RabbitMQBroker(
            "amqp://u:p@mq//",
            management_url="http://u:p@mq:15672/",
            http_transport=api,
            probe_factory=lambda prober=prober: prober,
        )
        with pytest.raises(expected):
            broker.queue_stats(["celery"])


def test_probe_tells_an_unreachable_result_backend_from_a_bug():
    from kombu.exceptions import OperationalError

    from deploykit.probe import backend_unreachable

    class OperationalErrorFromADriver(Exception):
        pass

    OperationalErrorFromADriver.__name__ = "OperationalError"

    class Backend:
        connection_errors = (KeyError,)

    assert backend_unreachable(ConnectionRefusedError(), Backend())
    assert backend_unreachable(OperationalError("down"), Backend())
    assert backend_unreachable(OperationalErrorFromADriver("server closed the connection"), Backend())
    assert not backend_unreachable(KeyError("status"), Backend())
    assert not backend_unreachable(TypeError("bug"), Backend())


# -- doctor with an unreachable broker ----------------------------------------------------------
def test_doctor_with_an_unreachable_broker_audits_the_app_says_what_it_skipped_and_exits_by_findings():
    import json

    from deploykit.demo.processes import free_port
    from tests.cli import run_deploykit

    url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    args = ("doctor", "-A", "tests.apps.basic", "-b", url, "--json")
    live = run_deploykit(*args, "--fail-on", "warning")
    offline = run_deploykit(*args, "--fail-on", "warning", "--offline")
    # The app sets no time limit: a warning, so exit 1 by the findings, exactly as --offline.
    assert live.returncode == offline.returncode == 1, live.stderr
    (line,) = live.stderr.splitlines()
    assert line.startswith(
        "deploykit: warning: live part skipped: cannot reach the Redis broker at redis://:***@"
    )
    assert line.endswith("audited the app and the files only")
    doc, offline_doc = json.loads(live.stdout), json.loads(offline.stdout)
    assert [f["rule"] for f in doc["findings"]] == [f["rule"] for f in offline_doc["findings"]]
    assert "NO_TIME_LIMIT" in {f["rule"] for f in doc["findings"]}
    assert any(note.startswith("live part skipped: ") for note in doc["notes"])
    assert SECRET not in live.stdout + live.stderr
    assert "Traceback" not in live.stderr

    nothing_else = run_deploykit("doctor", "-b", url)
    assert nothing_else.returncode == ExitCode.UNAVAILABLE
    assert "cannot reach the Redis broker" in nothing_else.stderr and SECRET not in nothing_else.stderr


def test_typer_exits_and_usage_errors_pass_through_the_handler_untouched():
    import typer

    from deploykit.cli.common import handle_errors

    for raised in (typer.Exit(3), typer.Abort(), typer.BadParameter("bad")):
        with pytest.raises(type(raised)), handle_errors():
            raise raised
