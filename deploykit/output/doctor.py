"""``doctor`` and ``probe`` output: text for people, one JSON body, GitHub annotations.

Doctor's findings are rendered by :mod:`deploykit.output.findings` (one renderer per format,
shared with ``check`` and ``scan``); this module adds what the audit looked at and the summary.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploykit.doctor.model import Audit, Finding
from deploykit.findings import counts
from deploykit.output import findings as out

if TYPE_CHECKING:
    from deploykit.probe import ProbeReport


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


def doctor_document(
    audit: Audit, findings: Sequence[Finding], *, fail_on: str, failed: bool
) -> dict[str, Any]:
    return {
        "summary": counts(findings),
        "fail_on": fail_on,
        "failed": failed,
        "findings": [out.finding_json(f) for f in findings],
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


def heading(audit: Audit, findings: Sequence[Finding]) -> out.Heading:
    return out.Heading(
        command="doctor",
        summary=_summary_line(audit, findings).removeprefix("doctor: "),
        title="deploykit doctor: risky settings",
        intro=_summary_line(audit, findings),
        notes=audit.notes,
        empty="No risky setting found.",
    )


def render_doctor_text(audit: Audit, findings: Sequence[Finding], out_: Any) -> None:
    """Each finding (where, why, hint, docs), the notes, then the summary line."""
    from rich.text import Text

    out.render_text(findings, out_)
    for note in audit.notes:
        out_.print(Text(f"note: {note}"), soft_wrap=True)
    out_.print(Text(_summary_line(audit, findings)), soft_wrap=True)


def github_summary(audit: Audit, findings: Sequence[Finding]) -> str:
    """The full list as Markdown, for ``$GITHUB_STEP_SUMMARY``."""
    return out.markdown(findings, heading(audit, findings))


def render_doctor_github(
    audit: Audit, findings: Sequence[Finding], write: Any, environ: Mapping[str, str] | None = None
) -> None:
    """Annotations (see :func:`deploykit.output.findings.github` for the truncation rule), the
    summary line, and the full table appended to ``$GITHUB_STEP_SUMMARY``."""
    environ = os.environ if environ is None else environ
    for line in out.github(findings, heading(audit, findings)).splitlines():
        write(line)
    summary_path = environ.get("GITHUB_STEP_SUMMARY")
    if summary_path:
        out.write_step_summary(github_summary(audit, findings), Path(summary_path))


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
