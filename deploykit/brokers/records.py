"""The record of what deploykit changed on the fleet: which consumer it cancelled on which worker.

``drain`` writes an entry *before* each ``cancel_consumer``; ``resume`` (possibly from another
machine, or a later CI step) re-adds exactly those consumers and deletes the entries. The record
lives in the broker, the one place every deploy step can reach:

* Redis (every kind of Redis URL: ``redis://``, ``rediss://``, ``redis+socket://``,
  ``sentinel://``): one hash ``<global_keyprefix>deploykit:consumers:<control exchange>`` in the
  broker's database, written through the broker's own client (so a Sentinel master, a unix socket
  and the key prefix are honoured exactly as for reading the queues), field
  ``<worker>\\x00<queue>`` -> JSON entry. Every write renews the key's TTL (7 days by default):
  a forgotten drain does not linger forever, and a week covers any release pipeline.
* RabbitMQ: a management-API *global parameter* ``deploykit-consumers.<vhost>.<exchange>`` whose
  JSON value holds the entries and an ``expires_at`` time (RabbitMQ parameters have no TTL; an
  expired value reads as empty and is deleted). Global parameters survive broker restarts, need no
  queue and no consumer, and are read without side effects — unlike a message in a queue, which
  RabbitMQ cannot peek (https://www.rabbitmq.com/docs/parameters#global-parameters). They need
  the ``administrator`` tag. The API is reached at the broker's management endpoint (see
  :mod:`deploykit.brokers.urls`).
* Other brokers: a JSON file under ``$XDG_STATE_HOME/deploykit/`` (local to this machine only).

Writes are read-modify-write: deploy steps run one after another, not concurrently.
"""

from __future__ import annotations

import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from deploykit.brokers.urls import ManagementEndpoint, mask_url
from deploykit.errors import Unavailable, UsageError

if TYPE_CHECKING:
    from deploykit.brokers.base import Broker
    from deploykit.brokers.rabbitmq_api import ManagementAPI

#: How long a record is kept after its last change.
DEFAULT_TTL = 7 * 24 * 3600.0


@dataclass(frozen=True)
class ConsumerRecord:
    """One consumer deploykit cancelled: enough to put it back exactly as it was."""

    worker: str
    queue: str
    #: The queue as the worker's ``active_queues`` reported it (``kombu.Queue.as_dict()``).
    spec: Mapping[str, Any] = field(default_factory=dict)
    #: The drain that cancelled it.
    drain_id: str = ""
    #: Unix time of the change.
    recorded_at: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return (self.worker, self.queue)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "spec": dict(self.spec)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ConsumerRecord:
        return cls(
            worker=str(data["worker"]),
            queue=str(data["queue"]),
            spec=dict(data.get("spec") or {}),
            drain_id=str(data.get("drain_id") or ""),
            recorded_at=float(data.get("recorded_at") or 0.0),
        )


class RecordStore(ABC):
    """Where the record lives."""

    #: ``redis``, ``rabbitmq``, ``file`` or ``memory``.
    kind: str = "memory"
    #: Where, for humans (no secrets).
    location: str = ""

    @abstractmethod
    def load(self) -> list[ConsumerRecord]:
        """Every entry not yet expired."""

    @abstractmethod
    def add(self, records: Sequence[ConsumerRecord]) -> None:
        """Add or replace entries (by worker and queue)."""

    @abstractmethod
    def remove(self, records: Sequence[ConsumerRecord]) -> None:
        """Delete entries (by worker and queue); missing ones are ignored."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class MemoryRecordStore(RecordStore):
    """A record in memory, for tests (and for the ``--no-record`` escape hatch)."""

    kind = "memory"
    location = "memory"

    def __init__(self, records: Sequence[ConsumerRecord] = ()) -> None:
        self.entries: dict[tuple[str, str], ConsumerRecord] = {r.key: r for r in records}
        self.log: list[tuple[str, tuple[tuple[str, str], ...]]] = []

    def load(self) -> list[ConsumerRecord]:
        return sorted(self.entries.values(), key=lambda r: r.key)

    def add(self, records: Sequence[ConsumerRecord]) -> None:
        self.log.append(("add", tuple(r.key for r in records)))
        for record in records:
            self.entries[record.key] = record

    def remove(self, records: Sequence[ConsumerRecord]) -> None:
        self.log.append(("remove", tuple(r.key for r in records)))
        for record in records:
            self.entries.pop(record.key, None)


def _field(record: ConsumerRecord) -> str:
    return f"{record.worker}\x00{record.queue}"


class RedisRecordStore(RecordStore):
    """A hash in the broker's Redis database, with a TTL renewed on every write."""

    kind = "redis"

    def __init__(
        self, client: Any, key: str, *, ttl: float = DEFAULT_TTL, location: str = "", owns_client: bool = True
    ) -> None:
        """``owns_client=False``: the client is the broker's, closed with the broker, not here."""
        self._client = client
        self._key = key
        self._ttl = int(ttl)
        self._owns_client = owns_client
        self.location = location or f"redis key {key!r}"

    def _call(self, fn: Callable[[], Any]) -> Any:
        import redis

        try:
            return fn()
        except redis.RedisError as exc:
            raise Unavailable(f"cannot reach the deploykit record ({self.location}): {exc}") from None

    def load(self) -> list[ConsumerRecord]:
        raw = self._call(lambda: self._client.hgetall(self._key))
        records = []
        for value in raw.values():
            try:
                records.append(ConsumerRecord.from_json(json.loads(value)))
            except (ValueError, KeyError, TypeError):
                continue  # an entry we cannot read is not ours to guess at
        return sorted(records, key=lambda r: r.key)

    def add(self, records: Sequence[ConsumerRecord]) -> None:
        if not records:
            return

        def write() -> None:
            pipe = self._client.pipeline()
            for record in records:
                pipe.hset(self._key, _field(record), json.dumps(record.to_json()))
            pipe.expire(self._key, self._ttl)
            pipe.execute()

        self._call(write)

    def remove(self, records: Sequence[ConsumerRecord]) -> None:
        if records:
            self._call(lambda: self._client.hdel(self._key, *[_field(r) for r in records]))

    def close(self) -> None:
        if not self._owns_client:
            return
        try:
            self._client.close()
        except Exception:  # closing a broken connection must not mask the real error
            pass


class RabbitMQRecordStore(RecordStore):
    """A management-API global parameter holding the entries and an expiry time."""

    kind = "rabbitmq"

    def __init__(
        self,
        api: ManagementAPI,
        name: str,
        *,
        ttl: float = DEFAULT_TTL,
        now: Callable[[], float] = time.time,
        location: str = "",
    ) -> None:
        self._api = api
        self._name = name
        self._ttl = ttl
        self._now = now
        self.location = location or f"RabbitMQ global parameter {name!r}"

    @classmethod
    def for_endpoint(
        cls,
        endpoint: ManagementEndpoint,
        vhost: str,
        exchange: str,
        *,
        ttl: float = DEFAULT_TTL,
        timeout: float = 5.0,
    ) -> RabbitMQRecordStore:
        """The record of ``vhost`` through the management API at ``endpoint``."""
        from deploykit.brokers.rabbitmq_api import ManagementAPI

        api = ManagementAPI(endpoint, timeout=max(timeout, 5.0))
        name = f"deploykit-consumers.{vhost}.{exchange}"
        location = f"RabbitMQ global parameter {name!r} at {mask_url(endpoint.base_url)}"
        return cls(api, name, ttl=ttl, location=location)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """The management API's failures as deploykit errors naming the record."""
        from deploykit.brokers.rabbitmq_api import ManagementDown

        try:
            yield
        except ManagementDown as down:
            if down.status in (401, 403):
                raise Unavailable(
                    "the RabbitMQ management API refused access to the deploykit record "
                    f"({self.location}): the user needs the 'administrator' tag to keep global parameters"
                ) from None
            if down.status is not None:
                raise Unavailable(f"deploykit record ({self.location}): HTTP {down.status}") from None
            raise Unavailable(f"cannot reach the deploykit record ({self.location}): {down.reason}") from None

    def _read(self) -> dict[tuple[str, str], ConsumerRecord]:
        with self._errors():
            value = self._api.global_parameter(self._name) or {}
        if not isinstance(value, Mapping) or float(value.get("expires_at") or 0) < self._now():
            return {}
        records: dict[tuple[str, str], ConsumerRecord] = {}
        for entry in value.get("entries") or []:
            try:
                record = ConsumerRecord.from_json(entry)
            except (KeyError, TypeError, ValueError):
                continue
            records[record.key] = record
        return records

    def _write(self, records: Mapping[tuple[str, str], ConsumerRecord]) -> None:
        with self._errors():
            if not records:
                self._api.delete_global_parameter(self._name)
                return
            value = {
                "expires_at": self._now() + self._ttl,
                "entries": [r.to_json() for r in sorted(records.values(), key=lambda r: r.key)],
            }
            self._api.set_global_parameter(self._name, value)

    def load(self) -> list[ConsumerRecord]:
        return sorted(self._read().values(), key=lambda r: r.key)

    def add(self, records: Sequence[ConsumerRecord]) -> None:
        if records:
            current = self._read()
            current.update({r.key: r for r in records})
            self._write(current)

    def remove(self, records: Sequence[ConsumerRecord]) -> None:
        if records:
            current = self._read()
            for record in records:
                current.pop(record.key, None)
            self._write(current)

    def close(self) -> None:
        self._api.close()


class FileRecordStore(RecordStore):
    """A JSON file: for brokers with no place to keep it (visible on this machine only)."""

    kind = "file"

    def __init__(self, path: Path, *, ttl: float = DEFAULT_TTL, now: Callable[[], float] = time.time) -> None:
        self._path = path
        self._ttl = ttl
        self._now = now
        self.location = f"file {path} (this machine only)"

    def _read(self) -> dict[tuple[str, str], ConsumerRecord]:
        try:
            data = json.loads(self._path.read_text())
        except (OSError, ValueError):
            return {}
        if float(data.get("expires_at") or 0) < self._now():
            return {}
        records = {}
        for entry in data.get("entries") or []:
            record = ConsumerRecord.from_json(entry)
            records[record.key] = record
        return records

    def _write(self, records: Mapping[tuple[str, str], ConsumerRecord]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        data = {"expires_at": self._now() + self._ttl, "entries": [r.to_json() for r in records.values()]}
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self._path)

    def load(self) -> list[ConsumerRecord]:
        return sorted(self._read().values(), key=lambda r: r.key)

    def add(self, records: Sequence[ConsumerRecord]) -> None:
        current = self._read()
        current.update({r.key: r for r in records})
        self._write(current)

    def remove(self, records: Sequence[ConsumerRecord]) -> None:
        current = self._read()
        for record in records:
            current.pop(record.key, None)
        self._write(current)


def open_record_store(
    broker: Broker,
    *,
    control_exchange: str = "celery",
    ttl: float = DEFAULT_TTL,
    timeout: float = 5.0,
) -> RecordStore:
    """The record store that fits ``broker``, reached the way ``broker`` reaches its server
    (no network traffic until it is used)."""
    key = f"deploykit:consumers:{control_exchange}"
    if broker.kind == "redis":
        from deploykit.brokers.redis import RedisBroker

        assert isinstance(broker, RedisBroker)
        prefixed = broker.global_keyprefix + key
        return RedisRecordStore(
            broker.client, prefixed, ttl=ttl, location=f"redis key {prefixed!r}", owns_client=False
        )
    if broker.kind == "rabbitmq":
        from deploykit.brokers.rabbitmq import RabbitMQBroker

        assert isinstance(broker, RabbitMQBroker)
        if broker.management is None:
            raise UsageError(
                "the deploykit record on RabbitMQ needs the management API: pass --management-url"
            )
        return RabbitMQRecordStore.for_endpoint(
            broker.management, broker.vhost, control_exchange, ttl=ttl, timeout=timeout
        )
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    # Named after the broker's address: the URL without its user information.
    safe = quote(broker.display_url.split("@")[-1], safe="")[:120]
    return FileRecordStore(state / "deploykit" / f"consumers-{safe}-{control_exchange}.json", ttl=ttl)
