"""scripts/test-services, the set-up `make test` and .ci/run share, on every path.

The real RabbitMQ here keeps running with its management plugin on (other tests need it): the
"off", "not running" and "not installed" paths are played with fake commands earlier on PATH, a
closed port for the management API, and the script's dry-run mode.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploykit.demo.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "test-services"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"  # no sbin: rabbitmq-server is not found there


def _fake(bindir: Path, name: str, body: str) -> None:
    path = bindir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def run(env: dict[str, str], bindir: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYKIT_") and k != "CI"}
    path = f"{bindir}:{SYSTEM_PATH}" if bindir else SYSTEM_PATH
    return subprocess.run(
        ["bash", str(SCRIPT)],
        env={**base, "PATH": path, "DEPLOYKIT_TEST_SERVICES_SBIN": "", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def closed_mgmt() -> dict[str, str]:
    """A management URL nothing answers on: RabbitMQ looks absent or its plugin off."""
    return {"DEPLOYKIT_TEST_RABBITMQ_MGMT": f"http://127.0.0.1:{free_port()}"}


def test_rabbitmq_not_installed_is_one_line_and_exit_0(closed_mgmt: dict[str, str]) -> None:
    result = run(closed_mgmt)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "RabbitMQ" in line]
    assert lines == [
        "test-services: RabbitMQ is not installed: its tests will be skipped "
        "(apt-get install rabbitmq-server to run them)"
    ]


def test_rabbitmq_not_installed_fails_under_ci(closed_mgmt: dict[str, str]) -> None:
    result = run({**closed_mgmt, "CI": "true"})
    assert result.returncode == 1
    assert "RabbitMQ is not installed and CI=true requires it: apt-get install rabbitmq-server" in (
        result.stderr
    )


@pytest.fixture
def amqp_port() -> Iterator[str]:
    """A port that accepts connections, standing in for a running broker's AMQP port."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield str(listener.getsockname()[1])


def test_management_plugin_off_is_enabled_and_waited_for(
    tmp_path: Path, closed_mgmt: dict[str, str], amqp_port: str
) -> None:
    """The broker runs, its management API is silent until the plugin is on."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    on = tmp_path / "plugin-on"
    _fake(bindir, "rabbitmq-server", f'echo "rabbitmq-server $*" >> {calls}')
    _fake(bindir, "rabbitmq-plugins", f'echo "rabbitmq-plugins $*" >> {calls}; touch {on}')
    _fake(bindir, "curl", f"test -e {on}")  # the management API answers once the plugin is on
    env = {**closed_mgmt, "DEPLOYKIT_TEST_RABBITMQ_PORT": amqp_port, "DEPLOYKIT_TEST_SERVICES_WAIT": "10"}
    result = run({**env, "CI": "true"}, bindir)
    assert result.returncode == 0, result.stderr
    assert "enabling the RabbitMQ management plugin" in result.stdout
    assert calls.read_text().splitlines() == ["rabbitmq-plugins enable --quiet rabbitmq_management"]


def test_management_api_that_never_answers_fails_with_its_url(
    tmp_path: Path, closed_mgmt: dict[str, str], amqp_port: str
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _fake(bindir, "rabbitmq-server", "exit 0")
    _fake(bindir, "rabbitmq-plugins", "exit 0")
    _fake(bindir, "curl", "exit 7")
    env = {**closed_mgmt, "DEPLOYKIT_TEST_RABBITMQ_PORT": amqp_port, "DEPLOYKIT_TEST_SERVICES_WAIT": "1"}
    result = run(env, bindir)
    assert result.returncode == 1
    url = closed_mgmt["DEPLOYKIT_TEST_RABBITMQ_MGMT"]
    assert f"the RabbitMQ management API did not answer at {url} within 1s" in result.stderr


def test_broker_not_running_is_started_then_the_plugin_enabled(
    tmp_path: Path, closed_mgmt: dict[str, str]
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _fake(bindir, "rabbitmq-server", "exit 0")
    _fake(bindir, "rabbitmq-plugins", "exit 0")
    env = {**closed_mgmt, "DEPLOYKIT_TEST_RABBITMQ_PORT": str(free_port())}
    result = run({**env, "DEPLOYKIT_TEST_SERVICES_DRY_RUN": "1"}, bindir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-4:] == [
        "test-services: starting rabbitmq-server",
        "test-services: would run: rabbitmq-server -detached",
        "test-services: enabling the RabbitMQ management plugin",
        "test-services: would run: rabbitmq-plugins enable --quiet rabbitmq_management",
    ]


def test_everything_up_is_quiet() -> None:
    """This machine: Redis and RabbitMQ with its management API running, nothing to do."""
    result = run({"DEPLOYKIT_TEST_SERVICES_DRY_RUN": "1"})
    if "RabbitMQ is not installed" in result.stdout:
        pytest.skip("RabbitMQ is not installed: apt-get install rabbitmq-server, then scripts/test-services")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def _pytest_without_rabbitmq(*extra: str, ci: bool) -> subprocess.CompletedProcess[str]:
    """The RabbitMQ tests of one file, on a "machine" where RabbitMQ is neither on PATH nor answering."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DEPLOYKIT_", "PYTEST_")) and k != "CI"}
    env = {
        **base,
        "PATH": SYSTEM_PATH,
        "DEPLOYKIT_TEST_SERVICES_SBIN": "",
        "DEPLOYKIT_TEST_RABBITMQ_MGMT": f"http://127.0.0.1:{free_port()}",
        **({"CI": "true"} if ci else {}),
    }
    files = ["tests/integration/test_rabbitmq_broker.py"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *extra, *files],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("extra", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_without_rabbitmq_its_tests_skip_with_one_summary_line(extra: tuple[str, ...]) -> None:
    from tests.conftest import NO_RABBITMQ

    result = _pytest_without_rabbitmq(*extra, ci=False)
    assert result.returncode == 0, result.stdout[-3000:]
    lines = [line for line in result.stdout.splitlines() if NO_RABBITMQ in line]
    assert len(lines) == 1, result.stdout[-3000:]
    assert lines[0].startswith("SKIPPED [") and lines[0].endswith(NO_RABBITMQ)


def test_without_rabbitmq_under_ci_its_tests_fail() -> None:
    result = _pytest_without_rabbitmq(ci=True)
    assert result.returncode == 1
    assert "CI=true requires RabbitMQ" in result.stdout
    assert "RabbitMQ is not installed" not in result.stdout
