"""Shared fixtures: private brokers' namespaces for integration tests.

Every integration test gets its own private ``redis-server`` database or its own RabbitMQ vhost,
and cleans up after itself; nothing touches data it did not create.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploykit.demo.processes import RedisProcess, start_redis

TESTS = Path(__file__).parent
RABBIT_HOST = os.environ.get("DEPLOYKIT_TEST_RABBITMQ_HOST", "127.0.0.1")
RABBIT_MGMT = f"http://{RABBIT_HOST}:15672"
RABBIT_AUTH = ("guest", "guest")


@pytest.fixture(scope="session")
def redis_process() -> Iterator[RedisProcess]:
    """One private redis-server for the session (a free port, nothing on disk), with a database
    for every test that asks for one (see ``redis_url``)."""
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


@pytest.fixture
def rabbitmq_vhost() -> Iterator[str]:
    """A private RabbitMQ vhost (guest has all rights), deleted afterwards. Yields its name."""
    name = f"deploykit-test-{uuid.uuid4().hex[:10]}"
    with _mgmt() as client:
        try:
            client.put(f"/api/vhosts/{name}").raise_for_status()
        except httpx.HTTPError as exc:  # pragma: no cover - environment problem
            pytest.fail(f"RabbitMQ management API not reachable at {RABBIT_MGMT}: {exc}")
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
