"""Read-only access to kombu's filesystem transport (``kombu/transport/filesystem.py``).

Layout, as kombu 5.7.0 writes it:

* one file per message, ``{monotonic ms}_{uuid4}.{queue}.msg`` (``Channel._put``), holding the
  same JSON envelope as the Redis transport; producers write into ``data_folder_out``, consumers
  read ``data_folder_in`` in ``sorted(os.listdir())`` order (``Channel._get``). We read the folder
  the workers consume, ``data_folder_in`` (default ``data_in``, relative to the current directory
  as in kombu); a worker and its clients normally point both options at the same folder.
* bindings: ``{control_folder}/{exchange}.exchange``, a JSON list of ``[routing_key, pattern,
  queue]`` (``Channel._queue_bind``); the remote-control mailboxes are bound to
  ``celery.pidbox.exchange``.
* a delivered message is moved out of the folder and deleted (``Channel._get``): unacknowledged
  messages exist only in the workers' memory, so ``unacked`` is unknown (``None``) here.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from deploykit.brokers.base import (
    Broker,
    BrokerSettings,
    QueueReport,
    QueueStats,
    StoredPage,
    is_internal_queue,
)
from deploykit.brokers.envelope import parse_ready
from deploykit.brokers.urls import mask_url
from deploykit.errors import Unavailable, UsageError

try:  # kombu locks the file while writing it (LOCK_EX); a shared lock waits for a whole file.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

NOTE = (
    "filesystem transport: delivered messages live only in the workers' memory "
    "(unacked and ETA counts come from the workers)"
)


def queue_of(filename: str) -> str | None:
    """The queue a message file belongs to: kombu matches ``filename.partition('.')[2]``."""
    rest = filename.partition(".")[2]
    if not rest.endswith(".msg"):
        return None
    return rest[: -len(".msg")] or None


class FilesystemBroker(Broker):
    """Messages and bindings of kombu's filesystem transport, read without moving a file."""

    kind: ClassVar[str] = "filesystem"
    reads_in_place: ClassVar[bool] = True

    def __init__(self, url: str, *, transport_options: Mapping[str, Any]) -> None:
        super().__init__(mask_url(url) or "")
        opts = dict(transport_options)
        # Defaults from kombu's Channel.data_folder_in / control_folder.
        self.data_folder = Path(str(opts.get("data_folder_in") or "data_in"))
        self.control_folder = Path(str(opts.get("control_folder") or "control"))

    def _message_files(self) -> list[str]:
        """Every message file name in consume order (kombu sorts the listing)."""
        try:
            return sorted(os.listdir(self.data_folder))  # noqa: PTH208 - names only, fast
        except FileNotFoundError:
            raise UsageError(
                f"filesystem broker: data_folder_in {str(self.data_folder)!r} does not exist "
                f"(resolved from {Path.cwd()}); set the transport option data_folder_in to the "
                "folder your workers consume"
            ) from None
        except NotADirectoryError:
            raise UsageError(
                f"filesystem broker: data_folder_in {str(self.data_folder)!r} is not a folder"
            ) from None
        except OSError as exc:
            raise Unavailable(
                f"filesystem broker: cannot list {str(self.data_folder)!r}: {exc.strerror}"
            ) from None

    def _tables(self) -> dict[str, list[tuple[str, str, str]]]:
        """``exchange -> [(rk, pattern, queue)]`` from the control folder (empty if absent)."""
        tables: dict[str, list[tuple[str, str, str]]] = {}
        try:
            entries = sorted(self.control_folder.glob("*.exchange"))
        except OSError:
            return tables
        for path in entries:
            table = self._read_table(path)
            if table is not None:
                tables[path.name[: -len(".exchange")]] = table
        return tables

    def _read_table(self, path: Path) -> list[tuple[str, str, str]] | None:
        data = self._read(path)
        if data is None:
            return None
        try:
            rows = json.loads(data)
        except ValueError:
            return None
        if not isinstance(rows, list):
            return None
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows if isinstance(r, list) and len(r) == 3]

    @staticmethod
    def _read(path: Path) -> bytes | None:
        """The file's bytes, or ``None`` if a consumer took it meanwhile. Never moves it."""
        try:
            with open(path, "rb") as handle:
                if fcntl is not None:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
                try:
                    return handle.read()
                finally:
                    if fcntl is not None:
                        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        except FileNotFoundError:
            return None

    def known_queues(self) -> list[str]:
        queues = {q for table in self._tables().values() for _, _, q in table}
        queues.update(q for q in map(queue_of, self._message_files()) if q)
        return sorted(q for q in queues if not is_internal_queue(q))

    def queue_stats(self, names: Sequence[str]) -> QueueReport:
        if not names:
            return QueueReport((), source="filesystem", notes=(NOTE,))
        counts = Counter(q for q in map(queue_of, self._message_files()) if q)
        bound = {q for table in self._tables().values() for _, _, q in table}
        rows = tuple(
            QueueStats(
                name=name,
                ready=counts.get(name, 0),
                unacked=None,
                unacked_eta=None,
                consumers=None,
                exists=name in bound or name in counts,
            )
            for name in names
        )
        return QueueReport(rows, source="filesystem", notes=(NOTE,))

    def iter_pages(self, queue: str, *, batch: int = 1000) -> Iterator[StoredPage]:
        """Messages of ``queue`` in the order ``Channel._get`` takes them; files are only read."""
        items: list[bytes] = []
        for filename in self._message_files():
            if queue_of(filename) != queue:
                continue
            data = self._read(self.data_folder / filename)
            if data is None:
                continue  # consumed since the listing
            items.append(data)
            if len(items) >= batch:
                yield StoredPage(queue, items, parse_ready)
                items = []
        if items:
            yield StoredPage(queue, items, parse_ready)

    def worker_mailboxes(self, control_exchange: str = "celery") -> list[str] | None:
        table = self._read_table(self.control_folder / f"{control_exchange}.pidbox.exchange")
        if table is None:
            return None
        suffix = f".{control_exchange}.pidbox"
        return sorted({q[: -len(suffix)] for _, _, q in table if q.endswith(suffix)})

    def settings(self) -> BrokerSettings:
        return BrokerSettings()
