"""Renderers for the scan report: text, JSON document, GitHub annotations + step summary.

The ``WAITING_*`` findings (:func:`deploykit.scan.findings.scan_findings`) are annotated and
tabulated by :mod:`deploykit.output.findings`, like ``check``'s and ``doctor``'s; the text keeps
the scan's own per-group layout (ETAs, sample ids, the groups that run).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deploykit.output import findings as common
from deploykit.output.documents import schema_name
from deploykit.scan.engine import Group, Report, Verdict
from deploykit.scan.findings import scan_findings, unchecked_data, verdict_docs, verdict_rule

#: Its version, with the others, in :data:`deploykit.output.documents.SCHEMAS`.
SCHEMA = schema_name("scan")


def _counts(totals: Any) -> dict[str, int]:
    return {v.value: totals.get(v, 0) for v in Verdict}


def document(report: Report, *, new: str, old: str | None, broker: str | None) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "broker": broker,
        "new_code": new,
        "old_manifest": old,
        "generated_at": report.now,
        # unsafe (exit 1) wins over incomplete (exit 5), which wins over ok (exit 0).
        "verdict": report.verdict,
        # Messages only: beat entries are counted in "beat".
        "totals": {
            **_counts(report.totals),
            "scanned": report.scanned,
            "breaking": report.breaking_messages,
            "expired": report.expired,
            "waiting": report.waiting,
            "unchecked": report.unchecked_count,
            "unchecked_unknown": report.unchecked_unknown,
        },
        "beat": {
            **_counts(report.beat_totals),
            "entries": report.beat_entries,
            "breaking": report.breaking_beat,
        },
        "unchecked": unchecked_data(report)["locations"],
        "groups": [
            {
                "task": g.task,
                "verdict": g.verdict.value,
                "count": g.count,
                "beat_entries": g.beat,
                "locations": dict(g.locations.most_common()),
                "reasons": dict(g.reasons.most_common()),
                "earliest_eta": g.earliest_eta,
                "latest_eta": g.latest_eta,
                "expired": g.expired,
                "sample_ids": g.samples,
                # The WAITING_* rule of the verdict and its page (null for runs).
                "rule": verdict_rule(g.verdict),
                "docs": verdict_docs(g.verdict),
            }
            for g in report.sorted_groups()
        ],
        "by_location": dict(report.by_location),
        "largest": {
            task: [{"size": size, "id": task_id} for size, task_id in sorted(heap, reverse=True)]
            for task, heap in sorted(report.largest.items())
        },
        "oversize_threshold": report.oversize,
        "oversized": dict(report.oversized),
        "undecidable_reasons": dict(report.undecidable_reasons.most_common()),
        "notes": report.notes,
        "old_builds": old_builds_data(report),
    }


def old_builds_data(report: Report) -> dict[str, Any]:
    """Stamped messages per build and how each build was judged (``manifest``: against its own
    manifest from the registry; ``unknown``: as an unstamped message; ``unreadable``: its
    registry entry is corrupt or newer, its messages undecidable)."""
    builds = report.old_builds
    if builds is None:
        return {"registry": None, "stamped": 0, "unknown": 0, "builds": []}
    return {
        "registry": builds.registry,
        "stamped": builds.stamped,
        "unknown": builds.unknown,
        "builds": [
            {"build": c.build, "messages": c.messages, "old_side": c.status.value, "problem": c.problem}
            for c in builds.rows()
        ],
    }


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def verdict_line(report: Report) -> str:
    """The verdict line: UNSAFE / INCOMPLETE / OK, messages and beat entries counted apart."""
    totals = ", ".join(f"{report.totals.get(v, 0)} {v.value}" for v in Verdict)
    line = f"{report.verdict.upper()}  {report.scanned} message(s) checked: {totals}"
    if report.beat_entries:
        beat = ", ".join(f"{n} {v.value}" for v in Verdict if (n := report.beat_totals.get(v, 0)))
        line += f"; {_plural(report.beat_entries, 'beat entry', 'beat entries')}: {beat}"
    incomplete = report.incomplete_summary()
    if incomplete:
        line += f"; incomplete: {incomplete}"
    return line


def _where(locations: Any) -> str:
    parts = [f"{name} x{count}" for name, count in locations.most_common(3)]
    if len(locations) > 3:
        parts.append(f"+{len(locations) - 3} more")
    return ", ".join(parts)


def _size(group: Group) -> str:
    parts = []
    if group.count or not group.beat:
        parts.append(f"{group.count} message(s)")
    if group.beat:
        parts.append(_plural(group.beat, "beat entry", "beat entries"))
    return " + ".join(parts)


def render_text(report: Report, out: Any) -> None:
    """One block per task and verdict, the worst first, what was not checked, then the verdict."""
    if not report.groups:
        out.print("No waiting message checked." if report.incomplete else "No waiting message found.")
    for g in report.sorted_groups():
        eta = ""
        if g.earliest_eta:
            eta = f"  ETA {g.earliest_eta:%Y-%m-%d %H:%M}"
            if g.latest_eta and g.latest_eta != g.earliest_eta:
                eta += f" … {g.latest_eta:%Y-%m-%d %H:%M}"
        samples = f"  e.g. {', '.join(g.samples)}" if g.samples else ""
        out.print(
            f"{g.verdict.value.upper():<11} {g.task}  {_size(g)} in {_where(g.locations)}{eta}",
            highlight=False,
        )
        if samples:
            out.print(f"            {samples.strip()}", highlight=False)
        for reason, count in g.reasons.most_common(3):
            if g.verdict is not Verdict.RUNS:
                prefix = f"{count} x " if len(g.reasons) > 1 else ""
                out.print(f"            {prefix}{reason}", highlight=False)
        if g.expired:
            out.print(f"            {g.expired} of them expired (expires in the past): they will be dropped")
        docs = verdict_docs(g.verdict)
        if docs:
            out.print(f"            docs: {docs}", highlight=False, soft_wrap=True)
    for task, count in sorted(report.oversized.items()):
        largest = max(report.largest.get(task, [(0, "?")]))
        out.print(
            f"Oversized: {count} message(s) of {task} exceed {report.oversize} bytes "
            f"(largest {largest[0]} bytes, id {largest[1]}): pass references, not data"
        )
    for u in report.unchecked:
        if u.count != 0:
            how_many = "an unknown number of" if u.count is None else str(u.count)
            out.print(
                f"Not checked: {how_many} message(s) in {u.location}: {u.reason}; {u.remedy}",
                highlight=False,
                soft_wrap=True,
            )
    for note in report.notes:
        out.print(f"Note: {note}", highlight=False, soft_wrap=True)
    out.print(verdict_line(report), highlight=False, soft_wrap=True)


def heading(report: Report) -> common.Heading:
    incomplete = report.incomplete_summary()
    intro = (
        f"{report.scanned} waiting message(s) checked, {report.breaking_messages} would fail, be "
        f"discarded or misbind; {report.beat_entries} beat entries checked, {report.breaking_beat} "
        "would break."
    )
    return common.Heading(
        command="scan",
        summary=verdict_line(report),
        title="deploykit scan: waiting messages",
        intro=intro + (f" **Incomplete**: {common.cell(incomplete)}" if incomplete else ""),
        notes=tuple(report.notes),
        incomplete=incomplete,
        empty="No waiting message would fail, be discarded, misbind or stay undecided.",
    )


def render_github(report: Report, write: Any, environ: Mapping[str, str] | None = None) -> None:
    """Annotations for the ``WAITING_*`` findings (see :func:`deploykit.output.findings.github`
    for the truncation rule), the verdict line, and the full table in ``$GITHUB_STEP_SUMMARY``."""
    environ = os.environ if environ is None else environ
    findings = scan_findings(report)
    head = heading(report)
    for line in common.github(findings, head).splitlines(keepends=True):
        write(line)
    summary = environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        common.write_step_summary(common.markdown(findings, head), Path(summary))
