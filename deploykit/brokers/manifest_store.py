"""Where the manifest registry (:mod:`deploykit.registry`) keeps its entries.

One entry per build, opaque bytes to the store (the registry encodes them):

* Redis (every kind of Redis URL): the string key
  ``<global_keyprefix>deploykit:manifests:build:<build>`` in the broker's database, written through
  the broker's own client (Sentinel master, unix socket and key prefix honoured as for the
  queues), with a TTL (30 days by default) that each publish of that build refreshes; and the
  sorted set ``<global_keyprefix>deploykit:manifests:index`` (build → publish time) for listing
  and trimming, whose own TTL each publish refreshes too.
* RabbitMQ: one durable classic queue ``deploykit.manifest.<build>`` per build holding the entry
  as its only message (``x-max-length: 1``: a new publish drops the old message atomically;
  ``x-expires``: RabbitMQ deletes a queue unused for the TTL), written and read through the
  management HTTP API. Everything it does (declare, publish to the default exchange, ``get`` with
  ``ack_requeue_true``, list the vhost's queues, delete) needs only the ``management`` tag and
  the vhost permissions configure/write/read on ``^deploykit\\.manifest\\.`` — unlike a global
  parameter (the drain record's choice), which needs the ``administrator`` tag
  (https://www.rabbitmq.com/docs/management#permissions). RabbitMQ cannot peek at a message: a
  read takes it and puts it back at once; a reader that finds the queue's message held by
  another reader retries briefly, and a read asks for a few messages and keeps the newest, so a
  publish racing a read never returns the older manifest.
* A directory (``--registry DIR``): one ``<build>.json`` file per build, written atomically
  (temporary file + rename); for brokers with no place to keep it. No TTL: the limit bounds it.
"""

from __future__ import annotations

import base64
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from deploykit.brokers.urls import mask_url
from deploykit.errors import Unavailable, UsageError

if TYPE_CHECKING:
    from deploykit.brokers.base import Broker
    from deploykit.brokers.rabbitmq_api import ManagementAPI

#: How long an entry is kept after its build's last publish (brokers with a TTL).
DEFAULT_TTL = 30 * 24 * 3600.0
#: The RabbitMQ queue of a build is this prefix + the build id.
QUEUE_PREFIX = "deploykit.manifest."
#: The Redis keys, under the broker's ``global_keyprefix``.
REDIS_ENTRY_PREFIX = "deploykit:manifests:build:"
REDIS_INDEX = "deploykit:manifests:index"


@dataclass(frozen=True)
class StoredEntry:
    """An entry as the store holds it."""

    build: str
    data: bytes
    #: When the store says it was written (``None`` when it keeps no time).
    stored_at: float | None = None


class ManifestStore(ABC):
    """Where the registry's entries live."""

    #: ``redis``, ``rabbitmq``, ``directory`` or ``memory``.
    kind: str = "memory"
    #: Where, for humans (no secrets).
    location: str = ""

    @abstractmethod
    def write(self, build: str, data: bytes, published_at: float) -> None:
        """Create or replace the entry of ``build``."""

    @abstractmethod
    def read(self, build: str) -> bytes | None:
        """The entry of ``build``; ``None`` when there is none."""

    @abstractmethod
    def list(self) -> list[StoredEntry]:
        """Every entry."""

    @abstractmethod
    def delete(self, build: str) -> None:
        """Delete the entry of ``build``; a missing one is fine."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class MemoryManifestStore(ManifestStore):
    """Entries in memory, for tests."""

    kind = "memory"
    location = "memory"

    def __init__(self) -> None:
        self.entries: dict[str, StoredEntry] = {}

    def write(self, build: str, data: bytes, published_at: float) -> None:
        self.entries[build] = StoredEntry(build, data, published_at)

    def read(self, build: str) -> bytes | None:
        entry = self.entries.get(build)
        return entry.data if entry else None

    def list(self) -> list[StoredEntry]:
        return list(self.entries.values())

    def delete(self, build: str) -> None:
        self.entries.pop(build, None)


class RedisManifestStore(ManifestStore):
    """String keys with a TTL plus a sorted-set index, in the broker's Redis database."""

    kind = "redis"

    def __init__(
        self, client: Any, *, prefix: str = "", ttl: float = DEFAULT_TTL, owns_client: bool = False
    ) -> None:
        """``owns_client=False``: the client is the broker's, closed with the broker, not here."""
        self._client = client
        self._entry_prefix = prefix + REDIS_ENTRY_PREFIX
        self._index = prefix + REDIS_INDEX
        self._ttl = max(int(ttl), 1)
        self._owns_client = owns_client
        self.location = f"redis keys {self._entry_prefix + '*'!r}"

    def _call(self, fn: Callable[[], Any]) -> Any:
        import redis

        try:
            return fn()
        except redis.RedisError as exc:
            raise Unavailable(f"cannot reach the manifest registry ({self.location}): {exc}") from None

    def _key(self, build: str) -> str:
        return self._entry_prefix + build

    def write(self, build: str, data: bytes, published_at: float) -> None:
        def run() -> None:
            pipe = self._client.pipeline()
            pipe.set(self._key(build), data, ex=self._ttl)
            pipe.zadd(self._index, {build: published_at})
            pipe.expire(self._index, self._ttl)
            # Builds whose key expired leave the index here (listing skips them meanwhile).
            pipe.zremrangebyscore(self._index, "-inf", f"({published_at - self._ttl}")
            pipe.execute()

        self._call(run)

    def read(self, build: str) -> bytes | None:
        value = self._call(lambda: self._client.get(self._key(build)))
        return bytes(value) if value is not None else None

    def list(self) -> list[StoredEntry]:
        def run() -> list[StoredEntry]:
            indexed = self._client.zrange(self._index, 0, -1, withscores=True)
            if not indexed:
                return []
            builds = [b.decode() if isinstance(b, bytes) else str(b) for b, _ in indexed]
            values = self._client.mget([self._key(b) for b in builds])
            return [
                StoredEntry(build, bytes(value), float(score))
                for build, (_, score), value in zip(builds, indexed, values, strict=True)
                if value is not None
            ]

        result: list[StoredEntry] = self._call(run)
        return result

    def delete(self, build: str) -> None:
        def run() -> None:
            pipe = self._client.pipeline()
            pipe.delete(self._key(build))
            pipe.zrem(self._index, build)
            pipe.execute()

        self._call(run)

    def close(self) -> None:
        if self._owns_client:
            try:
                self._client.close()
            except Exception:  # closing a broken connection must not mask the real error
                pass


def _segment(value: str) -> str:
    return quote(value, safe="")


class RabbitMQManifestStore(ManifestStore):
    """One durable queue per build, its entry the only message, through the management API."""

    kind = "rabbitmq"
    #: Reads of an empty queue before it counts as empty (another reader may hold the message).
    READ_ATTEMPTS = 10

    def __init__(
        self,
        api: ManagementAPI,
        vhost: str,
        *,
        ttl: float = DEFAULT_TTL,
        sleep: Callable[[float], None] = time.sleep,
        location: str = "",
    ) -> None:
        self._api = api
        self._vhost = vhost
        self._ttl_ms = max(int(ttl * 1000), 1)
        self._sleep = sleep
        self.location = location or f"RabbitMQ queues {QUEUE_PREFIX + '*'!r} in vhost {vhost!r}"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        from deploykit.brokers.rabbitmq_api import ManagementDown

        try:
            yield
        except ManagementDown as down:
            if down.status in (401, 403):
                raise Unavailable(
                    f"the RabbitMQ management API refused access to the manifest registry ({self.location}): "
                    "the user needs the 'management' tag and configure/write/read permissions on "
                    f"'^deploykit\\.manifest\\.' in vhost {self._vhost!r}"
                ) from None
            raise Unavailable(
                f"cannot reach the manifest registry ({self.location}): {down.reason}"
            ) from None

    def _path(self, build: str) -> str:
        return f"/api/queues/{_segment(self._vhost)}/{_segment(QUEUE_PREFIX + build)}"

    def _fail(self, response: Any, doing: str) -> Unavailable:
        if response.status_code in (401, 403):
            return Unavailable(
                f"the RabbitMQ management API refused to {doing} ({self.location}, HTTP "
                f"{response.status_code}): the user needs the 'management' tag and configure/write/read "
                f"permissions on '^deploykit\\.manifest\\.' in vhost {self._vhost!r}"
            )
        return Unavailable(f"cannot {doing} ({self.location}): HTTP {response.status_code}")

    def _declare(self, build: str) -> None:
        body = {
            "durable": True,
            "auto_delete": False,
            "arguments": {"x-max-length": 1, "x-expires": self._ttl_ms, "x-queue-type": "classic"},
        }
        response = self._api.request("PUT", self._path(build), json=body)
        if response.status_code == 400:
            # Declared earlier with other arguments (another TTL): declare it afresh.
            self._api.request("DELETE", self._path(build))
            response = self._api.request("PUT", self._path(build), json=body)
        if response.status_code not in (200, 201, 204):
            raise self._fail(response, "declare the registry queue")

    def write(self, build: str, data: bytes, published_at: float) -> None:
        with self._errors():
            self._declare(build)
            body = {
                "properties": {
                    "delivery_mode": 2,
                    "content_type": "application/json",
                    "timestamp": int(published_at),
                    "headers": {"deploykit-published-at": repr(float(published_at))},
                },
                "routing_key": QUEUE_PREFIX + build,
                "payload": base64.b64encode(data).decode(),
                "payload_encoding": "base64",
            }
            path = f"/api/exchanges/{_segment(self._vhost)}/amq.default/publish"
            response = self._api.request("POST", path, json=body)
            if response.status_code != 200:
                raise self._fail(response, "publish to the registry queue")
            answer = response.json()
            if not (isinstance(answer, Mapping) and answer.get("routed")):
                raise Unavailable(
                    f"the registry queue of build {build!r} did not take the manifest ({self.location})"
                )

    def _get(self, build: str) -> list[tuple[float, bytes]] | None:
        body = {"count": 5, "ackmode": "ack_requeue_true", "encoding": "base64"}
        response = self._api.request("POST", self._path(build) + "/get", json=body)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, "read the registry queue")
        items = response.json()
        found = []
        for item in items if isinstance(items, list) else []:
            try:
                data = base64.b64decode(item["payload"])
                headers = (item.get("properties") or {}).get("headers") or {}
                when = float(headers.get("deploykit-published-at") or 0.0)
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
            found.append((when, data))
        return found

    def _read(self, build: str) -> tuple[float, bytes] | None:
        for attempt in range(self.READ_ATTEMPTS):
            found = self._get(build)
            if found is None:
                return None
            if found:
                return max(found, key=lambda item: item[0])  # the newest, should a read race a publish
            # The queue is there but gave nothing: another reader may hold its message for a moment
            # (the management API's message counts lag by seconds, so they cannot tell).
            if attempt + 1 < self.READ_ATTEMPTS:
                self._sleep(0.05)
        return None

    def read(self, build: str) -> bytes | None:
        with self._errors():
            found = self._read(build)
        return found[1] if found else None

    def list(self) -> list[StoredEntry]:
        with self._errors():
            rows = self._api.list_queues(self._vhost, "name")
            builds = sorted(
                str(row["name"])[len(QUEUE_PREFIX) :]
                for row in rows
                if str(row.get("name", "")).startswith(QUEUE_PREFIX)
            )
            entries = []
            for build in builds:
                found = self._read(build)
                if found is not None:
                    entries.append(StoredEntry(build, found[1], found[0] or None))
        return entries

    def delete(self, build: str) -> None:
        with self._errors():
            response = self._api.request("DELETE", self._path(build))
            if response.status_code not in (200, 204, 404):
                raise self._fail(response, "delete the registry queue")

    def close(self) -> None:
        self._api.close()


class DirectoryManifestStore(ManifestStore):
    """One JSON file per build in a directory (``--registry DIR``)."""

    kind = "directory"
    SUFFIX = ".json"

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self.location = f"directory {directory}"

    def _file(self, build: str) -> Path:
        return self._dir / f"{build}{self.SUFFIX}"

    def _problem(self, exc: OSError, doing: str) -> UsageError:
        return UsageError(f"cannot {doing} the manifest registry ({self.location}): {exc.strerror or exc}")

    def write(self, build: str, data: bytes, published_at: float) -> None:
        target = self._file(build)
        tmp = self._dir / f".{build}.{os.getpid()}.tmp"
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.utime(tmp, (published_at, published_at))
            tmp.replace(target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._problem(exc, "write to") from None

    def read(self, build: str) -> bytes | None:
        try:
            return self._file(build).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._problem(exc, "read") from None

    def list(self) -> list[StoredEntry]:
        from deploykit.registry import validate_build

        entries = []
        try:
            files = sorted(self._dir.glob(f"*{self.SUFFIX}"))
        except OSError as exc:
            raise self._problem(exc, "list") from None
        for path in files:
            build = path.name[: -len(self.SUFFIX)]
            try:
                validate_build(build)
                data, mtime = path.read_bytes(), path.stat().st_mtime
            except (UsageError, OSError):
                continue  # not an entry of ours
            entries.append(StoredEntry(build, data, mtime))
        return entries

    def delete(self, build: str) -> None:
        try:
            self._file(build).unlink(missing_ok=True)
        except OSError as exc:
            raise self._problem(exc, "delete from") from None


def open_manifest_store(
    broker: Broker | None, *, directory: Path | None = None, ttl: float | None = None
) -> ManifestStore:
    """The store for ``broker`` (reached the way it reaches its server), or ``directory`` when
    given. No network traffic until it is used."""
    ttl = DEFAULT_TTL if ttl is None else ttl
    if ttl <= 0:
        raise UsageError(f"invalid registry TTL {ttl:g}s: it must be positive")
    if directory is not None:
        return DirectoryManifestStore(directory)
    if broker is None:
        raise UsageError("no manifest registry: pass -b/--broker URL or --registry DIR")
    if broker.kind == "redis":
        from deploykit.brokers.redis import RedisBroker

        assert isinstance(broker, RedisBroker)
        return RedisManifestStore(broker.client, prefix=broker.global_keyprefix, ttl=ttl)
    if broker.kind == "rabbitmq":
        from deploykit.brokers.rabbitmq import RabbitMQBroker
        from deploykit.brokers.rabbitmq_api import ManagementAPI

        assert isinstance(broker, RabbitMQBroker)
        if broker.management is None:
            raise UsageError(
                "the manifest registry on RabbitMQ needs the management API: pass --management-url"
            )
        location = (
            f"RabbitMQ queues {QUEUE_PREFIX + '*'!r} in vhost {broker.vhost!r} at "
            f"{mask_url(broker.management.base_url)}"
        )
        return RabbitMQManifestStore(
            ManagementAPI(broker.management, timeout=10.0), broker.vhost, ttl=ttl, location=location
        )
    raise UsageError(
        f"broker {broker.display_url} ({broker.kind}) has no place for the manifest registry: "
        "pass --registry DIR (a directory every deploy machine can reach)"
    )
