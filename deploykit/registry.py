"""The manifest registry: the manifest of each build, kept where every deploy machine can read it.

``deploykit manifest publish`` (CI, a deploy script, or a worker starting) stores a manifest under
a *build id*; ``manifest list`` / ``manifest show`` read it back from any machine that reaches the
same broker (or the same ``--registry`` directory). Where the entries live is a
:class:`~deploykit.brokers.manifest_store.ManifestStore` (Redis keys, RabbitMQ queues, a
directory); this module only sees that interface.

The registry is bounded: at most ``limit`` builds (50 by default) are kept, the oldest publish
dropped first, but never a build in the ``protect`` set (builds that still have live workers or
waiting messages: the caller knows them). The build just published is always kept.

An entry is one JSON document (format :data:`ENTRY_FORMAT`)::

    {"registry": 1, "build": "<id>", "published_at": <unix time>, "tasks": <n>,
     "manifest": <the manifest document, as ``deploykit manifest snapshot`` writes it>}

An entry that cannot be read (corrupt JSON, a future ``registry`` format or manifest schema) is
listed with its problem and refused by :meth:`ManifestRegistry.get` with a
:class:`~deploykit.errors.UsageError` (exit 2); it is never guessed at.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deploykit.errors import UsageError

if TYPE_CHECKING:
    from celery import Celery

    from deploykit.brokers.manifest_store import ManifestStore, StoredEntry
    from deploykit.manifest.model import Manifest

#: The format of a registry entry; a newer one is refused, never misread.
ENTRY_FORMAT = 1
#: Builds kept by default.
DEFAULT_LIMIT = 50
#: The longest build id accepted.
MAX_BUILD_LENGTH = 128


def validate_build(value: object, *, what: str = "build id") -> str:
    """``value`` as a build id, or a :class:`UsageError` saying what is wrong with it.

    A build id is 1 to 128 printable characters (no control characters, no whitespace other than
    the plain space, no ``/`` or ``\\``, not ``.`` or ``..``): it names a Redis key, a RabbitMQ
    queue and a file, and is printed in tables and logs.
    """
    if not isinstance(value, str):
        raise UsageError(f"invalid {what}: expected a string, got {type(value).__name__}")
    shown = ascii(value[:24]) + ("…" if len(value) > 24 else "")
    if not value or not value.strip():
        raise UsageError(f"invalid {what}: it is empty")
    if len(value) > MAX_BUILD_LENGTH:
        raise UsageError(f"invalid {what} {shown}: {len(value)} characters, at most {MAX_BUILD_LENGTH}")
    if not value.isprintable():
        raise UsageError(f"invalid {what} {shown}: control or non-printable characters")
    if "/" in value or "\\" in value or value in (".", ".."):
        raise UsageError(f"invalid {what} {shown}: no '/' or '\\', and not '.' or '..'")
    return value


@dataclass(frozen=True)
class RegistryEntry:
    """One build in the registry, as ``manifest list`` shows it."""

    build: str
    #: Unix time of the publish (``None`` when the entry cannot be read and the store has no time).
    published_at: float | None
    #: Tasks in the manifest (``None`` when the entry cannot be read).
    tasks: int | None
    #: Bytes stored.
    size: int
    #: Why the entry cannot be used (corrupt, future format); ``None`` when it can.
    problem: str | None = None


@dataclass(frozen=True)
class PublishResult:
    """What a publish did."""

    entry: RegistryEntry
    #: The build was already in the registry (its manifest is replaced, its time refreshed).
    replaced: bool
    #: Builds dropped to keep the registry within its limit, oldest first.
    dropped: tuple[str, ...]
    #: Builds kept beyond the limit because they were protected.
    kept_protected: tuple[str, ...]


def encode_entry(build: str, manifest: Manifest, published_at: float) -> bytes:
    """The stored form of ``manifest`` under ``build``."""
    from deploykit.manifest import model

    document = {
        "registry": ENTRY_FORMAT,
        "build": build,
        "published_at": published_at,
        "tasks": len(manifest.tasks),
        "manifest": model.to_document(manifest),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _envelope(build: str, data: bytes) -> dict[str, Any]:
    """The entry's JSON object, checked; a :class:`UsageError` naming the build otherwise."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise UsageError(f"registry entry of build {build!r} is corrupt (not JSON)") from None
    if not isinstance(document, dict):
        raise UsageError(f"registry entry of build {build!r} is corrupt (not a JSON object)")
    fmt = document.get("registry")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise UsageError(f"registry entry of build {build!r} is corrupt (no 'registry' format)")
    if fmt > ENTRY_FORMAT:
        raise UsageError(
            f"registry entry of build {build!r} has format {fmt}, newer than this deploykit reads "
            f"({ENTRY_FORMAT}): upgrade deploykit"
        )
    if fmt < 1:
        raise UsageError(f"registry entry of build {build!r} is corrupt (format {fmt})")
    if document.get("build") != build:
        raise UsageError(f"registry entry of build {build!r} is corrupt (it names another build)")
    published = document.get("published_at")
    if not isinstance(published, (int, float)) or isinstance(published, bool):
        raise UsageError(f"registry entry of build {build!r} is corrupt (no publish time)")
    return document


def decode_entry(build: str, data: bytes) -> tuple[Manifest, float]:
    """The manifest and publish time of a stored entry (a :class:`UsageError` when it cannot be
    trusted)."""
    from deploykit.manifest import model

    document = _envelope(build, data)
    manifest = model.from_document(document.get("manifest"), source=f"registry entry of build {build!r}")
    return manifest, float(document["published_at"])


def _summary(stored: StoredEntry) -> RegistryEntry:
    try:
        validate_build(stored.build)
        document = _envelope(stored.build, stored.data)
        tasks = document.get("tasks")
        if not isinstance(tasks, int) or isinstance(tasks, bool):
            raise UsageError(f"registry entry of build {stored.build!r} is corrupt (no task count)")
    except UsageError as problem:
        return RegistryEntry(stored.build, stored.stored_at, None, len(stored.data), problem.message)
    return RegistryEntry(stored.build, float(document["published_at"]), tasks, len(stored.data))


class ManifestRegistry:
    """The registry over one store: publish, read back, list, bounded to ``limit`` builds."""

    def __init__(
        self, store: ManifestStore, *, limit: int = DEFAULT_LIMIT, now: Callable[[], float] = time.time
    ) -> None:
        if limit < 1:
            raise UsageError(f"invalid registry limit {limit}: keep at least 1 build")
        self.store = store
        self.limit = limit
        self._now = now

    @property
    def location(self) -> str:
        """Where the entries live, for humans (no secrets)."""
        return self.store.location

    def publish(self, build: str, manifest: Manifest, *, protect: Collection[str] = ()) -> PublishResult:
        """Store ``manifest`` under ``build`` (replacing an earlier one), then drop the oldest
        builds beyond the limit, except ``build`` itself and the builds in ``protect``."""
        validate_build(build)
        replaced = self.store.read(build) is not None
        published_at = self._now()
        data = encode_entry(build, manifest, published_at)
        self.store.write(build, data, published_at)
        entry = RegistryEntry(build, published_at, len(manifest.tasks), len(data))
        dropped, kept = self._trim(keep={build, *protect})
        return PublishResult(entry, replaced, dropped, kept)

    def _trim(self, *, keep: set[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        entries = self.entries()  # newest first
        if len(entries) <= self.limit:
            return (), ()
        # The protected builds and the newest others fill the limit; protected ones beyond it stay.
        room = max(self.limit - sum(1 for e in entries if e.build in keep), 0)
        others = [e for e in entries if e.build not in keep]
        doomed = others[room:]
        kept_protected = tuple(e.build for e in entries[self.limit :] if e.build in keep)
        for entry in reversed(doomed):  # oldest first
            self.store.delete(entry.build)
        return tuple(e.build for e in reversed(doomed)), kept_protected

    def get(self, build: str) -> Manifest | None:
        """The manifest of ``build``; ``None`` when the registry has none. A :class:`UsageError`
        when the entry is corrupt or from a newer deploykit."""
        validate_build(build)
        data = self.store.read(build)
        if data is None:
            return None
        manifest, _ = decode_entry(build, data)
        return manifest

    def entries(self) -> list[RegistryEntry]:
        """Every build in the registry, newest publish first (unreadable entries last)."""
        rows = [_summary(stored) for stored in self.store.list()]
        return sorted(rows, key=lambda e: (e.published_at is None, -(e.published_at or 0.0), e.build))


def publish_running_manifest(
    app: Celery,
    build: str,
    *,
    broker_url: str | None = None,
    transport_options: dict[str, Any] | None = None,
    registry_dir: str | None = None,
    limit: int = DEFAULT_LIMIT,
    ttl: float | None = None,
    protect: Collection[str] = (),
) -> PublishResult:
    """Publish the manifest of the running ``app`` under ``build``: one call for a worker hook.

    Reads the app already loaded in this process (no import of user modules beyond what the
    worker has), reaches the broker at ``broker_url`` (default: the app's ``broker_url``; with
    ``transport_options``, default the app's ``broker_transport_options``) or the directory
    ``registry_dir``. Raises :class:`~deploykit.errors.DeploykitError` on any failure it
    understands; a hook should catch ``Exception`` and log: a registry must never stop a worker.
    """
    from pathlib import Path

    from deploykit.brokers import open_broker
    from deploykit.brokers.manifest_store import open_manifest_store
    from deploykit.config import Settings
    from deploykit.manifest.collect import collect_app

    validate_build(build)
    manifest = collect_app(app, Path.cwd())
    broker = None
    if not registry_dir:
        url = broker_url or str(app.conf.broker_url or "")
        if transport_options is None:
            transport_options = dict(app.conf.broker_transport_options or {})
        settings = Settings(
            app=None,
            broker_url=url or None,
            management_url=None,
            timeout=5.0,
            transport_options=transport_options,
        )
        broker = open_broker(settings)
    try:
        store = open_manifest_store(broker, directory=Path(registry_dir) if registry_dir else None, ttl=ttl)
        try:
            return ManifestRegistry(store, limit=limit).publish(build, manifest, protect=protect)
        finally:
            store.close()
    finally:
        if broker is not None:
            broker.close()
