"""The manifest registry on a real Redis (private database), a real RabbitMQ (private vhost, a
user without the ``administrator`` tag) and a directory: publish from two machines (two working
directories, two processes), list and show from a third."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from deploykit.brokers.base import is_internal_queue
from deploykit.brokers.manifest_store import QUEUE_PREFIX
from deploykit.manifest import model
from tests.cli import ROOT, run_deploykit
from tests.conftest import RABBIT_AUTH, RABBIT_HOST, RABBIT_MGMT

APP = "tests.apps.basic"


def _machines(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Three working directories, one per "machine"; the app is importable from each."""
    dirs = tuple(tmp_path / name for name in ("ci", "deploy", "laptop"))
    for folder in dirs:
        folder.mkdir()
    return dirs  # type: ignore[return-value]


def _env() -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT)}


def _publish_from_two_machines_and_read_from_a_third(
    tmp_path: Path, before: tuple[str, ...] = (), after: tuple[str, ...] = ()
) -> None:
    """``before``: options before the command (``-b URL``); ``after``: after it (``--registry``)."""
    ci, deploy, laptop = _machines(tmp_path)

    def dk(*cmd: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_deploykit(*before, "manifest", *cmd, *after, env={**_env(), **(env or {})}, cwd=cwd)

    first = dk("publish", "--build", "v1", "-A", APP, cwd=ci)
    assert first.returncode == 0, first.stderr
    assert "published the manifest of build v1 (3 tasks" in first.stdout
    snapshot = model.dumps(model.Manifest(tasks={}))
    (deploy / "m.json").write_text(snapshot)
    second = dk("publish", "--from", "m.json", "--json", env={"DEPLOYKIT_BUILD": "v2"}, cwd=deploy)
    assert second.returncode == 0, second.stderr
    document = json.loads(second.stdout)
    assert document["schema"] == "deploykit.publish/1"
    assert document["entry"]["build"] == "v2" and document["entry"]["tasks"] == 0
    assert document["replaced"] is False and document["dropped"] == []

    listed = dk("list", "--json", cwd=laptop)
    assert listed.returncode == 0, listed.stderr
    builds = json.loads(listed.stdout)["builds"]
    assert [(b["build"], b["tasks"], b["problem"]) for b in builds] == [("v2", 0, None), ("v1", 3, None)]
    text = dk("list", cwd=laptop)
    assert text.returncode == 0 and "v1" in text.stdout and "2 build(s)" in text.stdout

    shown = dk("show", "v1", cwd=laptop)
    assert shown.returncode == 0, shown.stderr
    manifest = model.loads(shown.stdout)
    assert "tests.apps.basic.send_email" in manifest.tasks
    assert model.loads(dk("show", "v2", cwd=laptop).stdout).tasks == {}

    missing = dk("show", "v3", cwd=laptop)
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip().endswith("(deploykit manifest list shows the builds it has)")
    assert "Traceback" not in missing.stderr

    odd = dk("publish", "--build", "a/b\x1b[31m", "-A", APP, cwd=ci)
    assert odd.returncode == 2 and len(odd.stderr.strip().splitlines()) == 1
    assert "\x1b" not in odd.stderr

    # The limit: a third build with --limit 2 drops the oldest, and says so.
    third = dk("publish", "--build", "v3", "--from", "m.json", "--limit", "2", cwd=deploy)
    assert third.returncode == 0, third.stderr
    assert "registry full (limit 2 builds): dropped 1 oldest: v1" in third.stdout
    after = json.loads(dk("list", "--json", cwd=laptop).stdout)
    assert [b["build"] for b in after["builds"]] == ["v3", "v2"]


# -- Redis ------------------------------------------------------------------------------------


def test_redis_registry_across_machines(redis_url: str, tmp_path: Path) -> None:
    _publish_from_two_machines_and_read_from_a_third(tmp_path, before=("-b", redis_url))


def test_redis_registry_honours_the_key_prefix_and_keeps_a_ttl(redis_url: str) -> None:
    import redis

    from deploykit.brokers.manifest_store import open_manifest_store
    from deploykit.brokers.redis import RedisBroker
    from deploykit.registry import ManifestRegistry

    broker = RedisBroker(redis_url, transport_options={"global_keyprefix": "app1:"}, timeout=1.0)
    client = redis.Redis.from_url(redis_url)
    try:
        registry = ManifestRegistry(open_manifest_store(broker, ttl=3600))
        registry.publish("v1", model.Manifest(tasks={}))
        keys = sorted(k.decode() for k in client.keys("*"))
        assert keys == ["app1:deploykit:manifests:build:v1", "app1:deploykit:manifests:index"]
        assert 3500 < client.ttl("app1:deploykit:manifests:build:v1") <= 3600
        assert 3500 < client.ttl("app1:deploykit:manifests:index") <= 3600
        # A key that expired leaves the listing, and the next publish cleans the index.
        client.delete("app1:deploykit:manifests:build:v1")
        assert registry.entries() == []
        assert registry.get("v1") is None
        # A corrupt entry written by someone else: listed with its problem, refused by get.
        client.set("app1:deploykit:manifests:build:bad", b"\x80\x81")
        client.zadd("app1:deploykit:manifests:index", {"bad": 5.0})
        [entry] = registry.entries()
        assert entry.build == "bad" and entry.problem is not None and entry.published_at == 5.0
        from deploykit.errors import UsageError

        with pytest.raises(UsageError, match="corrupt"):
            registry.get("bad")
        # Another prefix is another registry.
        other = RedisBroker(redis_url, transport_options={}, timeout=1.0)
        assert ManifestRegistry(open_manifest_store(other)).entries() == []
        other.close()
    finally:
        broker.close()
        client.close()


def test_redis_corrupt_entry_is_exit_2_in_one_line(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    client.set("deploykit:manifests:build:v9", json.dumps({"registry": 99, "build": "v9"}))
    client.zadd("deploykit:manifests:index", {"v9": 1.0})
    client.close()
    shown = run_deploykit("-b", redis_url, "manifest", "show", "v9")
    assert shown.returncode == 2
    assert shown.stderr.strip().splitlines() == [
        "deploykit: error: registry entry of build 'v9' has format 99, newer than this deploykit reads (1): "
        "upgrade deploykit"
    ]
    listed = run_deploykit("-b", redis_url, "manifest", "list")
    assert (
        listed.returncode == 0 and "unreadable: registry entry of build 'v9' has format 99" in listed.stdout
    )


def test_redis_unreachable_is_exit_69(tmp_path: Path) -> None:
    result = run_deploykit("-b", "redis://127.0.0.1:1/0", "manifest", "list")
    assert result.returncode == 69, result.stderr
    assert "Traceback" not in result.stderr


# -- RabbitMQ ---------------------------------------------------------------------------------


@pytest.fixture
def limited_user(rabbitmq_vhost: str) -> Iterator[tuple[str, str]]:
    """A user with only the ``management`` tag and permissions on the private vhost."""
    name, password = f"deploykit-registry-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with httpx.Client(base_url=RABBIT_MGMT, auth=RABBIT_AUTH, timeout=10) as client:
        client.put(f"/api/users/{name}", json={"password": password, "tags": "management"}).raise_for_status()
        client.put(
            f"/api/permissions/{quote(rabbitmq_vhost, safe='')}/{name}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        ).raise_for_status()
    yield name, password
    with httpx.Client(base_url=RABBIT_MGMT, auth=RABBIT_AUTH, timeout=10) as client:
        client.delete(f"/api/users/{name}")


def test_rabbitmq_registry_across_machines_without_the_administrator_tag(
    rabbitmq_vhost: str, limited_user: tuple[str, str], tmp_path: Path
) -> None:
    user, password = limited_user
    with httpx.Client(base_url=RABBIT_MGMT, auth=RABBIT_AUTH, timeout=10) as client:
        tags = client.get(f"/api/users/{user}").json()["tags"]
    assert "administrator" not in tags
    url = f"amqp://{user}:{password}@{RABBIT_HOST}:5672/{rabbitmq_vhost}"
    _publish_from_two_machines_and_read_from_a_third(tmp_path, before=("-b", url))
    with httpx.Client(base_url=RABBIT_MGMT, auth=RABBIT_AUTH, timeout=10) as client:
        queues = client.get(f"/api/queues/{quote(rabbitmq_vhost, safe='')}").json()
    ours = {q["name"]: q for q in queues if q["name"].startswith(QUEUE_PREFIX)}
    assert sorted(ours) == [QUEUE_PREFIX + "v2", QUEUE_PREFIX + "v3"]
    for queue in ours.values():
        assert queue["durable"] is True  # (message counts in this listing lag by seconds)
        assert queue["arguments"]["x-max-length"] == 1 and queue["arguments"]["x-expires"] > 0
        assert is_internal_queue(queue["name"])  # never listed or scanned as a task queue


def test_rabbitmq_republish_replaces_the_message_and_reads_leave_it(rabbitmq_url: str) -> None:
    from deploykit.brokers.manifest_store import open_manifest_store
    from deploykit.brokers.rabbitmq import RabbitMQBroker
    from deploykit.registry import ManifestRegistry

    broker = RabbitMQBroker(rabbitmq_url)
    store = open_manifest_store(broker, ttl=600)
    try:
        registry = ManifestRegistry(store)
        one = model.Manifest(tasks={"a": model.Task(name="a")})
        two = model.Manifest(tasks={"b": model.Task(name="b")})
        registry.publish("v1", one)
        assert registry.get("v1") == one
        assert registry.get("v1") == one  # a read puts the message back
        assert registry.publish("v1", two).replaced
        assert registry.get("v1") == two
        assert [(e.build, e.tasks) for e in registry.entries()] == [("v1", 1)]
        # A TTL that changed re-declares the queue instead of failing on its arguments.
        other = ManifestRegistry(open_manifest_store(broker, ttl=1200))
        other.publish("v1", one)
        assert other.get("v1") == one
        other.store.close()
    finally:
        store.close()
        broker.close()


def test_rabbitmq_user_without_permission_is_a_clear_error(
    rabbitmq_vhost: str, limited_user: tuple[str, str]
) -> None:
    user, password = limited_user
    with httpx.Client(base_url=RABBIT_MGMT, auth=RABBIT_AUTH, timeout=10) as client:
        client.put(
            f"/api/permissions/{quote(rabbitmq_vhost, safe='')}/{user}",
            json={"configure": "^$", "write": "^$", "read": ".*"},
        ).raise_for_status()
    url = f"amqp://{user}:{password}@{RABBIT_HOST}:5672/{rabbitmq_vhost}"
    result = run_deploykit("-b", url, "manifest", "publish", "--build", "v1", "-A", APP, env=_env())
    assert result.returncode == 69, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "configure/write/read permissions on '^deploykit\\.manifest\\.'" in line
    assert password not in line


# -- directory --------------------------------------------------------------------------------


def test_directory_registry_across_machines(tmp_path: Path) -> None:
    shared = tmp_path / "shared-registry"
    _publish_from_two_machines_and_read_from_a_third(tmp_path, after=("--registry", str(shared)))


def test_a_broker_with_no_place_asks_for_a_directory(tmp_path: Path) -> None:
    result = run_deploykit("-b", f"filesystem://{tmp_path}", "manifest", "list")
    assert result.returncode == 2
    assert "pass --registry DIR" in result.stderr and "Traceback" not in result.stderr


def test_publish_running_manifest_reaches_the_apps_broker(redis_url: str) -> None:
    from celery import Celery

    from deploykit.brokers.manifest_store import open_manifest_store
    from deploykit.brokers.redis import RedisBroker
    from deploykit.registry import ManifestRegistry, publish_running_manifest

    worker_app = Celery("w", broker=redis_url, set_as_current=False)
    worker_app.conf.broker_transport_options = {"global_keyprefix": "w:"}

    @worker_app.task(name="w.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    result = publish_running_manifest(worker_app, "w1")
    assert result.entry.tasks == 1
    broker = RedisBroker(redis_url, transport_options={"global_keyprefix": "w:"}, timeout=1.0)
    try:
        got = ManifestRegistry(open_manifest_store(broker)).get("w1")
    finally:
        broker.close()
    assert got is not None and [p.name for p in got.tasks["w.add"].parameters] == ["x", "y"]
