"""Read-only access to a Redis broker laid out by kombu's Redis transport.

Every layout fact below was checked against ``kombu/transport/redis.py`` (kombu 5.7.0) and is
cited by the name of the kombu attribute or method it mirrors:

* queue ``q`` is one LIST per priority step: ``q`` for step 0, ``q{sep}{step}`` otherwise
  (``Channel._q_for_pri``); publish is LPUSH and consume is RPOP/BRPOP over the steps in
  ``priority_steps`` order (``Channel._put``/``_get``), so index ``-1`` is the next message.
* bindings are SETs ``_kombu.binding.<exchange>`` with members ``rk{sep}pattern{sep}queue``
  (``Channel._queue_bind``); kombu 5.7 also writes ``_kombu.binding_permanent.<exchange>`` for
  queues without ``x-expires``. Older kombu has only the first.
* delivered, unacknowledged messages: HASH ``unacked`` (tag → JSON ``[message, exchange,
  routing_key]``) and ZSET ``unacked_index`` (tag → delivery time) (``QoS.append``).
* ``global_keyprefix`` is prepended to every one of those keys (``GlobalKeyPrefixMixin``).

Nothing here writes to Redis.

Interface decisions (see also :class:`RedisBroker`):

* ``exists`` is ``True`` when the queue is bound in any binding set, has a key for any
  priority step, or has unacknowledged messages attributed to it; ``False`` otherwise.
* an ``unacked`` entry is attributed like kombu's ``_lookup`` does when it restores it: exchange
  ``''`` → the routing key *is* the queue; otherwise the exchange's binding set decides (topic
  bindings store a pattern, direct ones do not; Redis does not record the exchange type, so an
  entry no binding matches is taken to be fanout and goes to every queue bound to the exchange).
  ``queue_stats`` counts it in every queue it resolves to (a redelivery restores a copy to each);
  ``unacked_messages`` names the queue when there is exactly one, else ``None``.
"""

from __future__ import annotations

import re
import time
from bisect import bisect
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, cast
from urllib.parse import unquote

import msgspec
import redis
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from deploykit.brokers.base import (
    Broker,
    BrokerSettings,
    QueueReport,
    QueueStats,
    RawMessage,
    StoredPage,
    is_internal_queue,
)
from deploykit.brokers.envelope import parse_ready, parse_unacked
from deploykit.brokers.urls import Redactor, first_url, mask_url, redis_db, split_failover, split_url
from deploykit.errors import Unavailable, UsageError

#: kombu defaults (``Channel.sep``, ``PRIORITY_STEPS``, ``Channel.visibility_timeout``,
#: ``Channel.unacked_key``, ``Channel.unacked_index_key``), the same since kombu 4.
DEFAULT_SEP = "\x06\x16"
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
DEFAULT_VISIBILITY_TIMEOUT = 3600.0
BINDING_PREFIX = "_kombu.binding."
PERMANENT_PREFIX = "_kombu.binding_permanent."  # kombu 5.7.0 only
#: Connecting must fail fast: an unreachable broker is reported, not waited on.
MAX_CONNECT_TIMEOUT = 3.0
MIN_READ_TIMEOUT = 10.0
#: SCAN walks the whole keyspace (result keys included); big pages save round trips.
_SCAN_COUNT = 10_000
#: The binding-set *keys* found by a SCAN are reused this long (their members are always read
#: fresh): ``status`` lists and counts queues, and ``drain`` polls, without one SCAN each time.
BINDING_KEYS_TTL = 10.0
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")

Binding = tuple[str, str, str]  # (routing key, pattern, queue)


def _glob_escape(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def priority_keys(queue: str, steps: Sequence[int], sep: str) -> list[tuple[int, str]]:
    """``(step, key)`` for every priority list of ``queue``, in consume order (unprefixed)."""
    keys: list[tuple[int, str]] = []
    seen: set[str] = set()
    for step in steps:
        # Channel.priority(): steps[bisect(steps, n) - 1]; Channel._q_for_pri(): no suffix for 0.
        pri = steps[bisect(steps, step) - 1]
        key = f"{queue}{sep}{pri}" if pri else queue
        if key not in seen:
            seen.add(key)
            keys.append((step, key))
    return keys


_TOPIC_CACHE: dict[str, re.Pattern[str]] = {}


def _topic_regex(binding_key: str) -> re.Pattern[str]:
    """kombu's ``TopicExchange.key_to_pattern``: ``*`` = one word, ``#`` = any words."""
    compiled = _TOPIC_CACHE.get(binding_key)
    if compiled is None:
        words = {"*": r"[^\.]+", "#": r".*?"}
        pattern = r"\.".join(words.get(w, re.escape(w)) for w in binding_key.split("."))
        compiled = _TOPIC_CACHE[binding_key] = re.compile(f"^{pattern}$")
    return compiled


def attribute(tables: Mapping[str, Iterable[Binding]], exchange: str, routing_key: str) -> tuple[str, ...]:
    """The queues an ``unacked`` entry belongs to (kombu ``Channel._lookup`` on restore)."""
    if not exchange:
        return (routing_key,) if routing_key else ()
    bindings = list(tables.get(exchange, ()))
    matched: set[str] = set()
    for bound_rk, pattern, queue in bindings:
        # Topic bindings carry a pattern (TopicExchange.prepare_bind), direct/fanout ones do not.
        # We rebuild the regex from the binding key rather than compile text read from Redis.
        hit = _topic_regex(bound_rk).match(routing_key) if pattern else bound_rk == routing_key
        if hit:
            matched.add(queue)
    if not matched:
        # Redis does not store the exchange type; an entry that was delivered yet matches no
        # binding can only have come through a fanout exchange (FanoutExchange.lookup).
        matched = {queue for _, _, queue in bindings}
    return tuple(sorted(q for q in matched if q))


class RedisBroker(Broker):
    """A Redis broker as kombu's Redis transport lays it out (read-only)."""

    kind: ClassVar[str] = "redis"
    #: The ``unacked`` hash holds every message workers hold (reserved, prefetched, ETA).
    shows_unacked: ClassVar[bool] = True
    reads_in_place: ClassVar[bool] = True

    def __init__(
        self,
        url: str,
        *,
        transport_options: Mapping[str, Any],
        timeout: float,
        client: redis.Redis | None = None,
    ) -> None:
        super().__init__(mask_url(url) or "")
        self._redact = Redactor()
        self._redact.add_url(url)
        opts = dict(transport_options)
        self.global_keyprefix = str(opts.get("global_keyprefix") or "")
        self.sep = str(opts.get("sep") or DEFAULT_SEP)
        steps = opts.get("priority_steps") or DEFAULT_PRIORITY_STEPS
        try:
            self.priority_steps: tuple[int, ...] = tuple(int(s) for s in steps)
        except (TypeError, ValueError):
            raise UsageError(f"transport option priority_steps must be integers, got {steps!r}") from None
        try:
            self.visibility_timeout = float(opts.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT))
        except (TypeError, ValueError):
            raise UsageError("transport option visibility_timeout must be a number") from None
        self.unacked_key = str(opts.get("unacked_key") or "unacked")
        self.unacked_index_key = str(opts.get("unacked_index_key") or "unacked_index")
        self.connect_timeout = min(max(float(timeout), 0.1), MAX_CONNECT_TIMEOUT)
        self.read_timeout = max(float(timeout), MIN_READ_TIMEOUT, float(opts.get("socket_timeout") or 0))
        self._lpos = True
        self._binding_keys: tuple[float, list[tuple[str, str]]] | None = None
        self._client = client if client is not None else self._make_client(url, opts)

    # ---------------------------------------------------------------------------- connecting
    @property
    def client(self) -> redis.Redis:
        """The redis-py client (Sentinel master, unix socket or TCP), for the drain record."""
        return self._client

    def _make_client(self, url: str, opts: Mapping[str, Any]) -> redis.Redis:
        """A client for ``url`` (no network traffic yet: redis-py connects on first use)."""
        first = first_url(url)
        parts = split_url(first)
        timeouts: dict[str, Any] = {
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self.read_timeout,
            # redis-py retries failed commands by default (3 times, with backoff; 4 s for an
            # unreachable Sentinel): fail at once instead, the caller decides what to do.
            "retry": Retry(NoBackoff(), 0),
        }
        if parts.scheme == "sentinel":
            return self._sentinel_client(url, opts, timeouts)
        if parts.scheme == "redis+socket":
            # kombu: redis+socket:///path/to/socket[?virtual_host=N]
            return redis.Redis(
                unix_socket_path=unquote(parts.path),
                db=redis_db(first),
                password=parts.password or None,
                socket_timeout=self.read_timeout,
                retry=timeouts["retry"],
            )
        try:
            return redis.Redis.from_url(first, db=redis_db(first), **timeouts)
        except ValueError as exc:
            raise UsageError(f"invalid Redis URL {self.display_url!r}: {self._redact(str(exc))}") from None

    def _sentinel_client(self, url: str, opts: Mapping[str, Any], timeouts: dict[str, Any]) -> redis.Redis:
        master_name = opts.get("master_name")
        if not master_name:
            raise UsageError("sentinel:// brokers need the transport option master_name")
        sentinels: list[tuple[str, int]] = []
        username = password = None
        for part in split_failover(url):
            parsed = split_url(part)
            sentinels.append((parsed.hostname or "127.0.0.1", parsed.port or 26379))
            if parsed.password and password is None:
                username, password = parsed.username or None, parsed.password
        extra = opts.get("sentinel_kwargs") or {}
        if not isinstance(extra, Mapping):
            raise UsageError("transport option sentinel_kwargs must be a table/object")
        try:
            min_other = int(opts.get("min_other_sentinels") or 0)
        except (TypeError, ValueError):
            raise UsageError("transport option min_other_sentinels must be an integer") from None
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            sentinels,
            min_other_sentinels=min_other,
            sentinel_kwargs={**timeouts, **extra},
            **timeouts,
        )
        master = sentinel.master_for(  # type: ignore[no-untyped-call]
            str(master_name), db=redis_db(url), username=username, password=password
        )
        return cast("redis.Redis", master)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate redis-py errors into deploykit's, never showing a password."""
        try:
            yield
        except (redis.exceptions.AuthenticationError, redis.exceptions.AuthenticationWrongNumberOfArgsError):
            raise UsageError(
                f"broker rejected the credentials in {self.display_url!r}: check the user name and password"
            ) from None
        except redis.exceptions.NoPermissionError as exc:
            raise UsageError(
                f"broker {self.display_url!r} denied a read command (Redis ACL): {self._redact(str(exc))}"
            ) from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            reason = self._redact(str(exc)) or type(exc).__name__
            raise Unavailable(f"cannot reach the Redis broker at {self.display_url}: {reason}") from None
        except redis.exceptions.RedisError as exc:
            reason = self._redact(str(exc)) or type(exc).__name__
            raise Unavailable(f"Redis broker at {self.display_url} failed: {reason}") from None

    def _k(self, key: str) -> str:
        return self.global_keyprefix + key

    # ---------------------------------------------------------------------------- bindings
    def _binding_tables(self, exchanges: Sequence[str] | None = None) -> dict[str, set[Binding]]:
        """``exchange -> {(rk, pattern, queue)}`` from the binding sets (both kinds, merged).

        With ``exchanges`` only those are read; otherwise one SCAN finds every binding set.
        """
        client = self._client
        keys: list[tuple[str, str]] = []
        if exchanges is not None:
            for exchange in exchanges:
                keys.append((exchange, self._k(BINDING_PREFIX + exchange)))
                keys.append((exchange, self._k(PERMANENT_PREFIX + exchange)))
        else:
            keys = self._scan_binding_keys()
        tables: dict[str, set[Binding]] = {}
        if not keys:
            return tables
        pipe = client.pipeline(transaction=False)
        for _, key in keys:
            pipe.smembers(key)
        for (exchange, _), members in zip(keys, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(members, Exception) or not members:
                continue  # not a set (someone else's key) or absent
            bindings = tables.setdefault(exchange, set())
            for member in members:
                parts = _text(member).split(self.sep, 2)
                if len(parts) == 3:
                    bindings.add((parts[0], parts[1], parts[2]))
        return tables

    def _scan_binding_keys(self) -> list[tuple[str, str]]:
        """``(exchange, key)`` of every binding set, from one SCAN (reused for a few seconds)."""
        now = time.monotonic()
        if self._binding_keys is not None and now - self._binding_keys[0] < BINDING_KEYS_TTL:
            return list(self._binding_keys[1])
        keys: list[tuple[str, str]] = []
        table, permanent = self._k(BINDING_PREFIX), self._k(PERMANENT_PREFIX)
        # One pattern covers both: "_kombu.binding" is their common stem.
        match = _glob_escape(self._k("_kombu.binding")) + "*"
        for raw in self._client.scan_iter(match=match, count=_SCAN_COUNT):
            key = _text(raw)
            for prefix in (table, permanent):
                if key.startswith(prefix):
                    keys.append((key[len(prefix) :], key))
        self._binding_keys = (now, keys)
        return list(keys)

    def known_queues(self) -> list[str]:
        with self._errors():
            tables = self._binding_tables()
        queues = {q for bindings in tables.values() for _, _, q in bindings}
        return sorted(q for q in queues if q and not is_internal_queue(q))

    # ---------------------------------------------------------------------------- counting
    def queue_stats(self, names: Sequence[str]) -> QueueReport:
        if not names:
            return QueueReport((), source="redis")
        with self._errors():
            tables = self._binding_tables()
            keys = [(name, priority_keys(name, self.priority_steps, self.sep)) for name in names]
            pipe = self._client.pipeline(transaction=False)
            for _, steps in keys:
                for _, key in steps:
                    pipe.llen(self._k(key))
            lengths = iter(pipe.execute(raise_on_error=False))
            unacked: Counter[str] = Counter()
            unacked_eta: Counter[str] = Counter()
            unattributed = 0
            for _tag, message, exchange, routing_key in self._scan_unacked():
                queues = attribute(tables, exchange, routing_key)
                if not queues:
                    unattributed += 1
                has_eta = bool(message.headers.eta)
                for queue in queues:
                    unacked[queue] += 1
                    if has_eta:
                        unacked_eta[queue] += 1
        bound = {q for bindings in tables.values() for _, _, q in bindings}
        rows = []
        for name, steps in keys:
            by_priority = {}
            for step, _ in steps:
                length = next(lengths)
                by_priority[step] = length if isinstance(length, int) else 0
            ready = sum(by_priority.values())
            rows.append(
                QueueStats(
                    name=name,
                    ready=ready,
                    unacked=unacked.get(name, 0),
                    unacked_eta=unacked_eta.get(name, 0),
                    consumers=None,
                    queue_type=None,
                    # An empty queue has no key at all (Redis deletes empty lists): being bound
                    # or having in-flight messages is what makes it real.
                    exists=name in bound or ready > 0 or name in unacked,
                    ready_by_priority=by_priority,
                )
            )
        notes = []
        if unattributed:
            notes.append(
                f"{unattributed} unacknowledged message(s) could not be attributed to a queue "
                "(their exchange has no bindings left)"
            )
        return QueueReport(tuple(rows), source="redis", notes=tuple(notes))

    # ---------------------------------------------------------------------------- unacked
    def _scan_unacked(self, count: int = 500) -> Iterator[tuple[str, RawMessage, str, str]]:
        """``(tag, message, exchange, routing_key)`` for every ``unacked`` entry.

        HSCAN keeps memory bounded (never HGETALL on a hash that may be huge); HSCAN can return
        an entry twice while the hash is rehashed, so tags already seen are skipped.
        """
        key = self._k(self.unacked_key)
        seen: set[bytes] = set()
        cursor = 0
        while True:
            cursor, page = cast(
                "tuple[int, dict[bytes, bytes]]", self._client.hscan(key, cursor, count=count)
            )
            for tag, data in page.items():
                if tag in seen:
                    continue
                seen.add(tag)
                message, exchange, routing_key = parse_unacked(data)
                yield _text(tag), message, exchange, routing_key
            if cursor == 0:
                return

    def unacked_messages(self) -> Iterator[RawMessage]:
        """Reserved, prefetched and ETA messages from the ``unacked`` hash, streamed."""
        with self._errors():
            tables = self._binding_tables()
            batch: list[tuple[str, RawMessage, str, str]] = []
            for item in self._scan_unacked():
                batch.append(item)
                if len(batch) >= 500:
                    yield from self._unacked_batch(batch, tables)
                    batch = []
            yield from self._unacked_batch(batch, tables)

    def _unacked_batch(
        self, batch: list[tuple[str, RawMessage, str, str]], tables: Mapping[str, set[Binding]]
    ) -> Iterator[RawMessage]:
        if not batch:
            return
        pipe = self._client.pipeline(transaction=False)
        index = self._k(self.unacked_index_key)
        for tag, _, _, _ in batch:
            pipe.zscore(index, tag)
        scores = pipe.execute(raise_on_error=False)
        for (tag, message, exchange, routing_key), score in zip(batch, scores, strict=True):
            queues = attribute(tables, exchange, routing_key)
            yield msgspec.structs.replace(
                message,
                queue=queues[0] if len(queues) == 1 else None,
                delivered_at=float(score) if isinstance(score, (int, float)) else None,
                delivery_tag=message.delivery_tag or tag,
            )

    # ---------------------------------------------------------------------------- peeking
    def iter_pages(self, queue: str, *, batch: int = 1000) -> Iterator[StoredPage]:
        """Every ready message of ``queue`` in consume order: priority lists in step order, each
        from its tail (index -1 is consumed next). Read-only: LRANGE, LPOS, LLEN only.
        """
        batch = max(1, int(batch))
        with self._errors():
            for _step, key in priority_keys(queue, self.priority_steps, self.sep):
                for items in self._iter_list(self._k(key), batch):
                    yield StoredPage(queue, items, parse_ready)

    def _iter_list(self, key: str, batch: int) -> Iterator[list[bytes]]:
        """Page through LIST ``key`` from its tail, robust to a live queue.

        Pages are addressed from the tail, which producers (LPUSH at the head) do not move. Each
        page also re-reads the last element already yielded (the anchor): when consumers popped
        from the tail meanwhile, the anchor is no longer where we expect it, and LPOS finds it
        again, so no message still waiting is skipped.
        """
        client = self._client
        anchor: bytes | None = None
        done = 0  # the anchor is at index -done
        while True:
            if anchor is None:
                items = cast("list[bytes]", client.lrange(key, -batch, -1))
                wanted = batch
            else:
                items = cast("list[bytes]", client.lrange(key, -(done + batch), -done))
                wanted = batch + 1
                if not items or items[-1] != anchor:
                    moved = self._locate(key, anchor)
                    if moved is None:
                        if self._lpos:
                            # The anchor itself was consumed, so was everything before it:
                            # what is left is unread; start again from the tail.
                            anchor, done = None, 0
                            continue
                        # No LPOS (Redis < 6.0.6): carry on; messages popped meanwhile shift
                        # the window and a few may be skipped.
                        wanted = batch
                    else:
                        done = moved
                        continue
                else:
                    items = items[:-1]
                    wanted = batch
            if not items:
                return
            yield items[::-1]
            done += len(items)
            anchor = items[0]
            if len(items) < wanted:
                return

    def _locate(self, key: str, element: bytes) -> int | None:
        """Distance of ``element`` from the tail of ``key`` (1 = last), atomically with LLEN."""
        if not self._lpos:
            return None
        pipe = self._client.pipeline(transaction=True)
        pipe.lpos(key, element, rank=-1)  # type: ignore[arg-type]  # bytes work; stubs say str
        pipe.llen(key)
        try:
            position, length = pipe.execute()
        except redis.exceptions.ResponseError:
            self._lpos = False
            return None
        if position is None:
            return None
        return int(length) - int(position)

    # ---------------------------------------------------------------------------- workers
    def worker_mailboxes(self, control_exchange: str = "celery") -> list[str] | None:
        """Node names bound to ``<control_exchange>.pidbox``; ``None`` if that set is absent.

        Members look like ``\\x06\\x16\\x06\\x16w1@host.celery.pidbox`` (kombu ``Mailbox.get_queue``).
        A worker killed with SIGKILL stays listed until kombu sweeps the binding table.
        """
        exchange = f"{control_exchange}.pidbox"
        with self._errors():
            tables = self._binding_tables([exchange])
        if exchange not in tables:
            return None
        suffix = f".{control_exchange}.pidbox"
        return sorted({q[: -len(suffix)] for _, _, q in tables[exchange] if q.endswith(suffix)})

    def settings(self) -> BrokerSettings:
        return BrokerSettings(visibility_timeout=self.visibility_timeout)

    def close(self) -> None:
        try:
            self._client.close()
        except redis.exceptions.RedisError:  # pragma: no cover - closing is best effort
            pass
