"""Shared fixtures: private brokers' namespaces for integration tests.

Every integration test gets its own private ``redis-server`` database or its own RabbitMQ vhost,
and cleans up after itself; nothing touches data it did not create.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import httpx
import pytest

from deploykit.demo.processes import RedisProcess, start_redis

TESTS = Path(__file__).parent
RABBIT_HOST = os.environ.get("DEPLOYKIT_TEST_RABBITMQ_HOST", "127.0.0.1")
RABBIT_MGMT = os.environ.get("DEPLOYKIT_TEST_RABBITMQ_MGMT", f"http://{RABBIT_HOST}:15672")
RABBIT_AUTH = ("guest", "guest")
# Where distributions put rabbitmq-server, often not on a non-root PATH (scripts/test-services too).
RABBIT_SBIN = os.environ.get(
    "DEPLOYKIT_TEST_SERVICES_SBIN", "/usr/local/sbin:/usr/sbin:/sbin:/usr/lib/rabbitmq/bin"
)


# The terminal size a pytest-xdist worker process finds in its environment is not the user's: the
# workers start with COLUMNS=80 and LINES=24, set below Python in the controller (its os.environ
# does not show them), and every `deploykit` a test runs would inherit them (narrower tables than
# under plain pytest). The controller hands its own values to the workers, which put them back.
_TERMINAL_ENV = ("COLUMNS", "LINES")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: object) -> None:  # pytest-xdist, in the controller
    node.workerinput["deploykit_terminal_env"] = {  # type: ignore[attr-defined]
        key: os.environ.get(key) for key in _TERMINAL_ENV
    }


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Every skip for want of RabbitMQ is reported from one place, so that pytest's summary folds
    them into a single ``SKIPPED [N] tests/conftest.py:…: RabbitMQ is not installed: …`` line
    (a skip in a fixture is otherwise reported at each test's own line)."""
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple) and report.longrepr[2].endswith(NO_RABBITMQ):
        report.longrepr = (__file__, _NO_RABBITMQ_LINE, report.longrepr[2])
    return report


def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)  # set in pytest-xdist worker processes only
    for key, value in (workerinput or {}).get("deploykit_terminal_env", {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def redis_process() -> Iterator[RedisProcess]:
    """One private redis-server for the session (a free port, nothing on disk), with a database
    for every test that asks for one (see ``redis_url``).

    Session scope is per process: under pytest-xdist every worker process starts its own server
    and counts its own databases, so parallel tests never share a server's database numbers.
    """
    process = start_redis(databases=REDIS_DATABASES)
    yield process
    process.stop()


REDIS_DATABASES = 1024
_redis_db_counter = iter(range(1, REDIS_DATABASES))


@pytest.fixture
def redis_url(redis_process: RedisProcess) -> Iterator[str]:
    """A fresh, empty database on the private Redis, flushed afterwards.

    Never one an earlier test used: Celery apps share kombu's global connection pools, keyed by
    URL, and a pooled connection remembers the queues it declared, so a later producer on a
    reused database would skip declaring its queues and leave no bindings.
    """
    import redis

    db = next(_redis_db_counter)
    client = redis.Redis(port=redis_process.port, db=db)
    client.flushdb()
    yield f"redis://127.0.0.1:{redis_process.port}/{db}"
    client.flushdb()
    client.close()


def _mgmt() -> httpx.Client:
    return httpx.Client(base_url=RABBIT_MGMT, auth=RABBIT_AUTH, timeout=10)


NO_RABBITMQ = "RabbitMQ is not installed: apt-get install rabbitmq-server, then scripts/test-services"


def _rabbitmq_missing(error: Exception) -> None:
    """The management API did not answer: skip (RabbitMQ not installed) or fail (anything else).

    Skipping is for a machine without RabbitMQ at all, and never under CI (``CI=true``), where
    every real-broker test must run.
    """
    installed = shutil.which("rabbitmq-server", path=f"{os.environ.get('PATH', '')}:{RABBIT_SBIN}")
    if installed is None and os.environ.get("CI") != "true":
        pytest.skip(NO_RABBITMQ)
    hint = "run scripts/test-services (make test does)" if installed else "CI=true requires RabbitMQ"
    pytest.fail(f"RabbitMQ management API not reachable at {RABBIT_MGMT} ({hint}): {error}")


_NO_RABBITMQ_LINE = _rabbitmq_missing.__code__.co_firstlineno - 1  # 0-based, as in pytest's reports


@pytest.fixture
def rabbitmq_vhost() -> Iterator[str]:
    """A private RabbitMQ vhost (guest has all rights), deleted afterwards. Yields its name."""
    name = f"deploykit-test-{uuid.uuid4().hex[:10]}"
    with _mgmt() as client:
        try:
            client.put(f"/api/vhosts/{name}").raise_for_status()
        except httpx.HTTPError as exc:
            _rabbitmq_missing(exc)
        client.put(
            f"/api/permissions/{name}/guest",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        ).raise_for_status()
    yield name
    with _mgmt() as client:
        client.delete(f"/api/vhosts/{name}")


@pytest.fixture
def rabbitmq_url(rabbitmq_vhost: str) -> str:
    return f"amqp://guest:guest@{RABBIT_HOST}:5672/{rabbitmq_vhost}"
