"""Text renderers of the manifest registry commands (``manifest publish`` and ``manifest list``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

from deploykit.output.humanize import count, listed
from deploykit.registry import PublishResult, RegistryEntry


def shown_build(build: str) -> str:
    """A build id safe to print on one line (an odd one written by someone else is escaped)."""
    return build if build.isprintable() else ascii(build)


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(value: int) -> str:
    if value < 1024:
        return f"{value} B"
    if value < 1024 * 1024:
        return f"{value / 1024:.1f} KiB"
    return f"{value / (1024 * 1024):.1f} MiB"


def render_publish(result: PublishResult, *, registry: str, limit: int) -> list[str]:
    """What ``manifest publish`` stored and what it dropped."""
    entry = result.entry
    verb = "replaced" if result.replaced else "published"
    lines = [
        f"{verb} the manifest of build {shown_build(entry.build)} ({count(entry.tasks)} tasks, "
        f"{_size(entry.size)}) in {registry}"
    ]
    if result.dropped:
        names = [shown_build(b) for b in result.dropped]
        lines.append(f"registry full (limit {limit} builds): dropped {len(names)} oldest: {listed(names)}")
    if result.kept_protected:
        names = [shown_build(b) for b in result.kept_protected]
        lines.append(f"kept beyond the limit, still in use: {listed(names)}")
    return lines


def render_entries(entries: Sequence[RegistryEntry], *, registry: str) -> list[str]:
    """``manifest list``: one line per build, newest first."""
    if not entries:
        return [f"no manifest in {registry}"]
    rows = [("BUILD", "PUBLISHED", "TASKS", "SIZE")]
    for entry in entries:
        tasks = count(entry.tasks) if entry.problem is None else f"unreadable: {entry.problem}"
        rows.append((shown_build(entry.build), _when(entry.published_at), tasks, _size(entry.size)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}".rstrip()
        for row in rows
    ]
    lines.append(f"{len(entries)} build(s) in {registry}")
    return lines
