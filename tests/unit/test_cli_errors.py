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
        c.exit_code for c in (UnsafeError, UsageError, TimedOut, Refused, Incomplete, Unavailable, Interrupted)
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
