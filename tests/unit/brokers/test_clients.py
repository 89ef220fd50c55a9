"""A broker URL whose client library is not installed: one line naming what to install, exit 2.

The real command runs in a subprocess where the library cannot be imported (``sys.modules[name] =
None`` makes both ``import name`` and ``importlib.util.find_spec(name)`` fail, as in an environment
without it). ``tests/install/`` checks the same in real environments that lack the library.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from deploykit.brokers.clients import require_client_libraries
from deploykit.errors import UsageError
from tests.cli import ROOT, clean_env

RUN_WITHOUT = (
    "import sys\n"
    "for name in sys.argv[1].split(','):\n"
    "    sys.modules[name] = None\n"
    "sys.argv = ['deploykit', *sys.argv[2:]]\n"
    "from deploykit.cli import main\n"
    "main()\n"
)


def run_without(modules: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT, modules, *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=ROOT,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("modules", "url", "expected"),
    [
        ("redis", "redis://:s3cret@127.0.0.1:1/0", "needs the Python package 'redis'"),
        ("redis", "sentinel://127.0.0.1:1", "pip install redis"),
        ("redis", "redis+socket:///tmp/none.sock", "pip install redis"),
        # kombu's Redis transport imports `packaging` at module load (kombu 5.4+).
        ("packaging", "redis://127.0.0.1:1/0", "pip install packaging"),
        ("boto3,botocore", "sqs://", "pip install boto3"),
        ("librabbitmq", "librabbitmq://guest:s3cret@127.0.0.1:1//", "pip install librabbitmq"),
    ],
)
def test_missing_client_library_is_one_line_exit_2(modules: str, url: str, expected: str) -> None:
    if modules == "packaging":
        import kombu.transport.redis as kombu_redis

        if "packaging" not in (kombu_redis.__loader__.get_source(kombu_redis.__name__) or ""):
            pytest.skip("this kombu's Redis transport does not import packaging")
    for command in ("queues", "status"):
        result = run_without(modules, command, "-b", url, "--timeout", "0.5")
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "s3cret" not in result.stderr + result.stdout


def test_present_libraries_pass_without_network() -> None:
    # Port 1: nothing listens; the check must not connect (it would fail or hang).
    require_client_libraries("redis://127.0.0.1:1/0", "redis", "redis://127.0.0.1:1/0")
    require_client_libraries("amqp://guest:guest@127.0.0.1:1//", "amqp", "amqp://guest:***@127.0.0.1:1//")
    require_client_libraries("memory://", "memory", "memory://")
    # A scheme kombu does not know is left to open_broker()'s own message.
    require_client_libraries("nosuch://x", "nosuch", "nosuch://x")


def test_late_imports_are_checked_before_use(monkeypatch: pytest.MonkeyPatch) -> None:
    # kombu's SQS transport needs pycurl only at its first HTTP request; deploykit asks first.
    import deploykit.brokers.clients as clients

    monkeypatch.setattr(clients, "LATE_IMPORTS", {"memory": ("deploykit_no_such_module",)})
    with pytest.raises(UsageError, match=r"pip install deploykit_no_such_module$"):
        require_client_libraries("memory://", "memory", "memory://")


def test_a_library_present_but_failing_is_not_called_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    # `from packaging.version import Version` failing with packaging installed is a version
    # problem: say what kombu said, not "pip install packaging".
    import kombu

    def broken(*args: object, **kwargs: object) -> object:
        raise ImportError("cannot import name 'Version' from 'packaging.version'", name="packaging.version")

    monkeypatch.setattr(kombu, "Connection", broken)
    with pytest.raises(UsageError) as excinfo:
        require_client_libraries("redis://127.0.0.1:1/0", "redis", "redis://127.0.0.1:1/0")
    assert "cannot load in this environment: cannot import name 'Version'" in excinfo.value.message
    assert "pip install" not in excinfo.value.message


def test_kombu_refusing_the_installed_client_version_is_a_usage_error() -> None:
    # kombu 5.6+ refuses redis-py < 6.1 when it opens a channel (the fleet's first request).
    from kombu.exceptions import VersionMismatch

    from deploykit.fleet.control import translate_broker_error

    error = translate_broker_error(
        VersionMismatch("Redis transport requires redis-py versions 6.1.0 or later. You have 5.0.8"),
        "redis://h:6379/0",
    )
    assert isinstance(error, UsageError) and error.exit_code == 2
    assert "requires redis-py versions 6.1.0 or later" in error.message
