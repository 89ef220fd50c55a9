"""Renderers for the scan report: text, JSON document, GitHub annotations + step summary."""

from __future__ import annotations

import os
from typing import Any

from deploykit.scan.engine import BREAKING, Report, Verdict

SCHEMA = "deploykit.scan/1"
GITHUB_ANNOTATIONS_PER_KIND = 10


def document(report: Report, *, new: str, old: str | None, broker: str | None) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "broker": broker,
        "new_code": new,
        "old_manifest": old,
        "generated_at": report.now,
        "totals": {
            **{v.value: report.totals.get(v, 0) for v in Verdict},
            "scanned": report.scanned,
            "breaking": report.breaking,
            "expired": report.expired,
        },
        "groups": [
            {
                "task": g.task,
                "verdict": g.verdict.value,
                "count": g.count,
                "locations": dict(g.locations.most_common()),
                "reasons": dict(g.reasons.most_common()),
                "earliest_eta": g.earliest_eta,
                "latest_eta": g.latest_eta,
                "expired": g.expired,
                "sample_ids": g.samples,
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
    }


def _where(locations: Any) -> str:
    parts = [f"{name} x{count}" for name, count in locations.most_common(3)]
    if len(locations) > 3:
        parts.append(f"+{len(locations) - 3} more")
    return ", ".join(parts)


def render_text(report: Report, out: Any) -> None:
    """One block per task and verdict, the worst first, then the totals."""
    if not report.groups:
        out.print("No waiting message found.")
    for g in report.sorted_groups():
        eta = ""
        if g.earliest_eta:
            eta = f"  ETA {g.earliest_eta:%Y-%m-%d %H:%M}"
            if g.latest_eta and g.latest_eta != g.earliest_eta:
                eta += f" … {g.latest_eta:%Y-%m-%d %H:%M}"
        samples = f"  e.g. {', '.join(g.samples)}" if g.samples else ""
        out.print(
            f"{g.verdict.value.upper():<11} {g.task}  {g.count} message(s) in {_where(g.locations)}{eta}",
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
    for task, count in sorted(report.oversized.items()):
        largest = max(report.largest.get(task, [(0, "?")]))
        out.print(
            f"Oversized: {count} message(s) of {task} exceed {report.oversize} bytes "
            f"(largest {largest[0]} bytes, id {largest[1]}): pass references, not data"
        )
    for note in report.notes:
        out.print(f"Note: {note}")
    totals = ", ".join(f"{report.totals.get(v, 0)} {v.value}" for v in Verdict)
    verdict = "UNSAFE" if report.breaking else "OK"
    out.print(f"{verdict}  {report.scanned} message(s): {totals}")


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render_github(report: Report, write: Any) -> None:
    """Workflow-command annotations (at most 10 per kind are shown) and the full table in
    ``$GITHUB_STEP_SUMMARY``."""
    shown = {"error": 0, "warning": 0}
    for g in report.sorted_groups():
        kind = "error" if g.verdict in BREAKING else "warning" if g.verdict is Verdict.UNDECIDABLE else None
        if kind is None or shown[kind] >= GITHUB_ANNOTATIONS_PER_KIND:
            continue
        shown[kind] += 1
        title = _escape_property(f"deploykit scan: {g.count} {g.task} message(s) {g.verdict.value}")
        reason = next(iter(g.reasons), "")
        write(f"::{kind} title={title}::{_escape_data(reason or g.verdict.value)}\n")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        lines = [
            "## deploykit scan",
            "",
            f"{report.scanned} waiting message(s) checked, "
            f"{report.breaking} would fail, be discarded or misbind.",
            "",
            "| task | verdict | count | where | why |",
            "|---|---|---|---|---|",
        ]
        for g in report.sorted_groups():
            why = next(iter(g.reasons), "").replace("|", "\\|")
            lines.append(f"| `{g.task}` | {g.verdict.value} | {g.count} | {_where(g.locations)} | {why} |")
        text = "\n".join(lines) + "\n"
        with open(summary, "a", encoding="utf-8") as handle:
            handle.write(text[: 1024 * 1000])
    totals = ", ".join(f"{report.totals.get(v, 0)} {v.value}" for v in Verdict)
    write(f"deploykit scan: {report.scanned} message(s): {totals}\n")
