"""Text output for people: rich tables for the inspection commands."""

from __future__ import annotations

from typing import Any

from deploykit.inspection import FleetView, QueuesView, ScheduledView, StatusView
from deploykit.output.humanize import count, duration

#: Rows shown in a text table; the JSON document has every row.
MAX_ROWS = 200
#: The ``where`` column for entries no worker holds.
_WHERE = {"broker-unacked": "broker (unacked, no live worker)", "queue": "queue (not taken yet)"}


def console(stderr: bool = False) -> Any:
    """A rich console that honours NO_COLOR/FORCE_COLOR and is plain when not a TTY."""
    import os
    import sys

    from rich.console import Console

    from deploykit.cli.common import color_enabled

    stream = sys.stderr if stderr else sys.stdout
    width = None
    tty = stream.isatty()
    if not tty:
        # Logs and pipes have no width: do not squeeze tables into 80 columns.
        width = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else 160
    # Piped, a line is a fact: never break it (grep, CI logs); tables still fit ``width``.
    return Console(
        stderr=stderr, no_color=not color_enabled(), highlight=False, soft_wrap=not tty, width=width
    )


def _table(title: str | None = None) -> Any:
    from rich import box
    from rich.table import Table

    return Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)


def render_workers(view: FleetView, out: Any) -> None:
    if not view.workers:
        out.print("No worker answered.")
    else:
        table = _table(f"Workers ({len(view.workers)} online)")
        for column in (
            "worker",
            "pid",
            "pool",
            "conc",
            "queues",
            "active",
            "reserved",
            "eta",
            "uptime",
            "celery",
            "build",
        ):
            table.add_column(
                column, justify="right" if column in {"pid", "conc", "active", "reserved", "eta"} else "left"
            )
        for w in view.workers:
            table.add_row(
                w.hostname + (" (partial)" if w.partial else ""),
                count(w.pid),
                w.pool or "?",
                count(w.concurrency),
                ",".join(w.queues) or "-",
                count(w.active),
                count(w.reserved),
                count(w.scheduled),
                duration(w.uptime),
                w.celery_version or "?",
                w.build or "-",
            )
        out.print(table)
    if view.discovery.silent:
        out.print(f"Not answering (mailbox still on the broker): {', '.join(view.discovery.silent)}")


def render_queues(view: QueuesView, out: Any) -> None:
    table = _table("Queues")
    for column in ("queue", "type", "ready", "unacked", "eta held", "consumers", "consumed by"):
        table.add_column(
            column, justify="right" if column in {"ready", "unacked", "eta held", "consumers"} else "left"
        )
    for q in view.queues:
        name = q.name if q.exists else f"{q.name} (missing)"
        ready = count(q.ready)
        if q.ready_by_priority and len([v for v in q.ready_by_priority.values() if v]) > 1:
            ready += " (" + " ".join(f"p{k}:{v}" for k, v in sorted(q.ready_by_priority.items()) if v) + ")"
        table.add_row(
            name,
            q.queue_type or "-",
            ready,
            count(q.unacked),
            count(q.eta_held),
            count(q.consumers),
            ",".join(q.consumer_workers) or "-",
        )
    if not view.queues:
        out.print("No queues found.")
    else:
        out.print(table)
    if view.delayed is not None:
        out.print(
            f"Native delayed delivery: {count(view.delayed.messages)} ETA message(s) in "
            f"{len(view.delayed.queues)} celery_delayed_* queue(s)"
            + (f" ({view.delayed.note})" if view.delayed.note else "")
        )
    for note in view.notes:
        out.print(f"Note: {note}")
    out.print(f"Source: {view.source}")


def render_scheduled(view: ScheduledView, out: Any) -> None:
    if view.entries:
        table = _table(f"Scheduled (ETA/countdown) tasks: {len(view.entries)}")
        # The build column only when some message read from the broker is stamped (deploykit.celery).
        builds = any(e.build for e in view.entries)
        for column in (
            "eta (UTC)",
            "in",
            "task",
            "id",
            "where",
            "queue",
            "args",
            *(("build",) if builds else ()),
        ):
            table.add_column(column)
        for e in view.entries[:MAX_ROWS]:
            where = _WHERE.get(e.location, e.worker)
            args = ", ".join(x for x in (e.args, e.kwargs) if x and x not in {"()", "{}"}) or "-"
            table.add_row(
                f"{e.eta:%Y-%m-%d %H:%M:%S}" if e.eta else "?",
                duration(e.seconds_left),
                e.name or "?",
                (e.id or "?")[:8],
                where or "?",
                e.queue or "?",
                args,
                *((e.build or "-",) if builds else ()),
            )
        out.print(table)
        if len(view.entries) > MAX_ROWS:
            out.print(f"… and {len(view.entries) - MAX_ROWS} more (see --json)")
        _print_hazards(view, out)
    elif view.waiting is None:
        out.print("No scheduled (ETA/countdown) task: none held by workers, none waiting in the queues read.")
    else:
        out.print("No scheduled (ETA/countdown) task held by workers or found in the queues read.")
    for note in view.notes:
        out.print(f"Note: {note}")


def _print_hazards(view: ScheduledView, out: Any) -> None:
    """One line per hazard code and task: a queue of 5000 alike ETA messages is one fact."""
    groups: dict[tuple[str, str | None], list[Any]] = {}
    for e in view.entries:
        for hazard in e.hazards:
            groups.setdefault((hazard.code, e.name), []).append((e, hazard))
    for (code, name), items in groups.items():
        entry, hazard = items[0]
        more = f" (and {len(items) - 1} more like it)" if len(items) > 1 else ""
        out.print(f"[{code}] {name} {entry.id}: {hazard.message}{more}")


def render_status(view: StatusView, out: Any) -> None:
    render_workers(view.fleet, out)
    out.print()
    render_queues(view.queues, out)
    out.print()
    held = view.scheduled.held
    queued = len(view.scheduled.entries) - held
    delayed = view.scheduled.delayed.messages if view.scheduled.delayed else None
    line = f"Scheduled: {held} ETA task(s) held"
    if queued:
        line += f", {queued} waiting in queues (no worker has taken them yet)"
    if delayed:
        line += f", {delayed} in the broker's delayed queues"
    if view.scheduled.entries:
        first = view.scheduled.entries[0]
        line += f"; next due in {duration(first.seconds_left)} ({first.name})"
    out.print(line)
    for note in view.scheduled.notes:
        out.print(f"Note: {note}")
    if view.hazards:
        out.print()
        out.print(f"Hazards ({len(view.hazards)}):")
        for hazard in view.hazards:
            out.print(f"  [{hazard.code}] {hazard.message}")
    out.print()
    out.print(("BUSY  " if view.verdict.busy else "IDLE  ") + view.verdict.summary)
