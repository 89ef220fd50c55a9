"""``doctor`` and ``probe`` output: text for people, one JSON document, GitHub annotations."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploykit.doctor.model import Audit, Finding, Level

if TYPE_CHECKING:
    from deploykit.probe import ProbeReport

#: GitHub shows only the first few annotations of each kind; the rest go to the step summary.
GITHUB_ANNOTATION_CAP = 10
_GITHUB_COMMAND = {Level.ERROR: "error", Level.WARNING: "warning", Level.INFO: "notice"}
_LABEL = {Level.ERROR: "ERROR", Level.WARNING: "WARN ", Level.INFO: "info "}
_STYLE = {Level.ERROR: "bold red", Level.WARNING: "yellow", Level.INFO: "cyan"}


def counts(findings: Iterable[Finding]) -> dict[str, int]:
    counter = Counter(f.level.value for f in findings)
    return {level.value: counter.get(level.value, 0) for level in Level}


def audited(audit: Audit) -> dict[str, Any]:
    """What the audit looked at, so an empty report is not mistaken for a clean bill."""
    return {
        "broker_kind": audit.broker_kind,
        "app": audit.app is not None,
        "workers": [w.origin.removeprefix("worker ") for w in audit.workers],
        "process_managers": [f"{p.kind} {p.name} ({p.path})" for p in audit.process_managers],
        "eta_tasks": len(audit.etas),
        "longest_eta_held_seconds": round(max((e.held_for for e in audit.etas), default=0.0), 1)
        if audit.etas
        else None,
        "queues": [q.name for q in audit.broker_queues],
    }


def finding_document(finding: Finding) -> dict[str, Any]:
    return {
        "id": finding.id,
        "level": finding.level.value,
        "title": finding.title,
        "why": finding.why,
        "fix": finding.fix,
        "docs": finding.docs,
        "where": list(finding.where),
        "file": finding.file,
        "line": finding.line,
    }


def doctor_document(
    audit: Audit, findings: Sequence[Finding], *, fail_on: str, failed: bool
) -> dict[str, Any]:
    return {
        "summary": counts(findings),
        "fail_on": fail_on,
        "failed": failed,
        "findings": [finding_document(f) for f in findings],
        "audited": audited(audit),
        "notes": list(audit.notes),
    }


def _summary_line(audit: Audit, findings: Sequence[Finding]) -> str:
    n = counts(findings)
    parts = [f"{n['error']} error(s)", f"{n['warning']} warning(s)", f"{n['info']} info"]
    what = []
    if audit.app is not None:
        what.append("the app")
    if audit.workers:
        what.append(f"{len(audit.workers)} worker(s)")
    if audit.broker_kind and audit.online:
        what.append(f"the {audit.broker_kind} broker")
    if audit.process_managers:
        what.append(f"{len(audit.process_managers)} process-manager program(s)")
    if audit.etas:
        what.append(f"{len(audit.etas)} waiting ETA task(s)")
    return "doctor: " + ", ".join(parts) + " — audited " + (", ".join(what) or "nothing")


def render_doctor_text(audit: Audit, findings: Sequence[Finding], out: Any) -> None:
    import textwrap

    from rich.text import Text

    indent = " " * 14
    width = max(int(getattr(out, "width", 100) or 100), 60)
    for f in findings:
        heading = Text.assemble((_LABEL[f.level], _STYLE[f.level]), " ", (f.id, "bold"), "  ", f.title)
        out.print(heading, soft_wrap=True)
        where = ", ".join(f.where)
        if f.file:
            where = f"{f.file}:{f.line}" if f.line else f.file
        for label, value in (("where:", where), ("why:", f.why), ("fix:", f.fix), ("docs:", f.docs)):
            if value:
                # Wrapped lines stay indented under their label (and carry no trailing spaces).
                lines = textwrap.wrap(value, width=width - len(indent)) or [""]
                first = f"       {label:<6} " + lines[0]
                out.print(Text("\n".join([first, *(indent + line for line in lines[1:])])), soft_wrap=True)
        out.print("")
    for note in audit.notes:
        out.print(Text(f"note: {note}"), soft_wrap=True)
    out.print(Text(_summary_line(audit, findings)), soft_wrap=True)


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(findings: Sequence[Finding], cap: int = GITHUB_ANNOTATION_CAP) -> list[str]:
    """``::error file=…,line=…,title=…::message`` lines, at most ``cap`` per level."""
    lines = []
    shown: Counter[Level] = Counter()
    for f in findings:
        if shown[f.level] >= cap:
            continue
        shown[f.level] += 1
        props = []
        if f.file:
            props.append(f"file={_escape_property(f.file)}")
            if f.line:
                props.append(f"line={f.line}")
        props.append(f"title={_escape_property('deploykit doctor: ' + f.id)}")
        message = f"{f.title} ({', '.join(f.where)}). Fix: {f.fix} See {f.docs}"
        lines.append(f"::{_GITHUB_COMMAND[f.level]} {','.join(props)}::{_escape_data(message)}")
    return lines


def github_summary(audit: Audit, findings: Sequence[Finding]) -> str:
    """The full list as Markdown, for ``$GITHUB_STEP_SUMMARY``."""
    rows = ["## deploykit doctor", "", _summary_line(audit, findings), ""]
    if findings:
        rows += ["| level | finding | where | fix |", "|---|---|---|---|"]
        for f in findings:
            cells = [f.level.value, f"[`{f.id}`]({f.docs}) {f.title}", ", ".join(f.where), f.fix]
            rows.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def render_doctor_github(
    audit: Audit, findings: Sequence[Finding], write: Any, environ: Mapping[str, str] | None = None
) -> None:
    environ = os.environ if environ is None else environ
    for line in github_annotations(findings):
        write(line)
    write(_summary_line(audit, findings))
    summary_path = environ.get("GITHUB_STEP_SUMMARY")
    if summary_path:
        with Path(summary_path).open("a", encoding="utf-8") as handle:
            handle.write(github_summary(audit, findings))


# --------------------------------------------------------------------------------------------
# probe
def probe_document(report: ProbeReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "confirmed_via": report.confirmed_via,
        "timeout": report.timeout,
        "elapsed": round(report.elapsed, 3),
        "events_enabled_on": list(report.events_enabled_on),
        "queues": [
            {
                "queue": r.queue,
                "status": r.status,
                "processed": r.processed,
                "worker": r.worker,
                "latency": None if r.latency is None else round(r.latency, 3),
                "consumers": list(r.consumers),
                "ready_ahead": r.ready_ahead,
                "task_id": r.task_id,
                "detail": r.detail,
            }
            for r in report.results
        ],
        "notes": list(report.notes),
    }


def render_probe_text(report: ProbeReport, out: Any) -> None:
    from rich.markup import escape

    from deploykit.output.text import _table

    table = _table(f"Probes ({report.confirmed_via}, timeout {report.timeout:g}s)")
    for column in ("queue", "status", "worker", "latency", "consumers", "detail"):
        table.add_column(column, justify="right" if column == "latency" else "left")
    styles = {"processed": "green", "timeout": "bold red", "no-consumers": "bold red", "failed": "bold red"}
    for r in report.results:
        table.add_row(
            escape(r.queue),
            f"[{styles.get(r.status, 'yellow')}]{r.status}[/]",
            escape(r.worker or "-"),
            "-" if r.latency is None else f"{r.latency * 1000:.0f} ms",
            escape(",".join(r.consumers) or "-"),
            escape(r.detail or ""),
        )
    if report.results:
        out.print(table)
    for note in report.notes:
        out.print(f"note: {escape(note)}")
    failed = [r.queue for r in report.results if not r.processed]
    if not report.results:
        out.print("probe: no queue with consumers to probe")
    elif failed:
        out.print(escape(f"probe: FAILED on {', '.join(failed)} ({len(report.results) - len(failed)} ok)"))
    else:
        out.print(f"probe: ok, {len(report.results)} queue(s) processed in {report.elapsed:.2f}s")
