"""Text output of ``deploykit builds``: one row per build, where its messages wait, what was not read."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from deploykit.builds import UNKNOWN, UNSTAMPED, BuildRow, BuildsView
from deploykit.output.humanize import count, listed
from deploykit.output.registry import shown_build
from deploykit.output.text import _table


def _name(row: BuildRow) -> str:
    if row.kind == UNSTAMPED:
        return "(unstamped)"
    if row.kind == UNKNOWN:
        return "(unknown build)"
    return shown_build(row.build or "")


def _places(row: BuildRow) -> str:
    """Where the row's messages wait, e.g. ``celery:3 unacked:1 held:w1@h=2 delayed:1 beat:2``."""
    messages = row.messages
    parts = [f"{queue}:{number}" for queue, number in messages.queues.items()]
    if messages.unacked:
        parts.append(f"unacked:{messages.unacked}")
    parts += [f"held:{worker}={number}" for worker, number in messages.held.items()]
    if messages.delayed:
        parts.append(f"delayed:{messages.delayed}")
    if messages.beat:
        parts.append(f"beat:{messages.beat}")
    return " ".join(parts) or "-"


def _eta(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def _manifest(value: bool | None) -> str:
    return "?" if value is None else "known" if value else "missing"


def render_builds(view: BuildsView, out: Any) -> None:
    """The table, then what was not read and the notes."""
    from rich.markup import escape

    if not view.rows:
        out.print("No build: no worker runs and no message waits.")
    else:
        table = _table(f"Builds ({len(view.rows)})")
        for column in ("build", "state", "workers", "waiting", "where", "latest eta", "manifest"):
            table.add_column(column, justify="right" if column == "waiting" else "left")
        for row in view.rows:
            workers = f"{len(row.workers)} ({listed(row.workers)})" if row.workers else "0"
            table.add_row(
                escape(_name(row)),
                row.state or "-",
                escape(workers),
                count(row.messages.total),
                escape(_places(row)),
                _eta(row.latest_eta),
                _manifest(row.manifest) if row.kind == "build" else "-",
            )
        out.print(table)
    for unread in view.unread:
        number = "?" if unread.messages is None else str(unread.messages)
        out.print(
            escape(f"unread: {number} message(s) in {unread.location}: {unread.reason} ({unread.remedy})")
        )
    if view.incomplete:
        out.print(
            "Counts are incomplete: the builds of unread messages are unknown "
            "(a build shown drained may not be)"
        )
    out.print(
        f"messages read: {view.read}" + (f"; registry: {escape(view.registry)}" if view.registry else "")
    )
    for note in view.notes:
        out.print(escape(f"note: {note}"))
