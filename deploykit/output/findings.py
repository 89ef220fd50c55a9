"""Renderers for a findings :class:`~deploykit.manifest.check.Report`.

* ``text``: rich, grouped by task (colour only on a TTY, ``NO_COLOR`` honoured);
* ``json``: :meth:`Report.document` (schema ``deploykit.findings/1``);

Every unsuppressed finding links to its rule's page (:attr:`Finding.docs`, built by
:func:`deploykit.docs.rule_url` alone): a ``docs:`` line in text, ``docs`` in JSON, ``See <url>``
ending GitHub annotations and GitLab descriptions (GitLab's Code Quality subset has no link
field: ``description``, ``check_name``, ``fingerprint``, ``severity``, ``location``), the rule ID
as a link in Markdown.
* ``github``: workflow-command annotations (``::error file=…,line=…,title=…::…``), errors first —
  GitHub shows only about 10 per kind per step, so the full table goes to ``$GITHUB_STEP_SUMMARY``
  (:func:`write_step_summary`, capped below GitHub's 1 MiB limit);
* ``gitlab``: a Code Quality report (a JSON array in GitLab's Code Climate subset);
* ``markdown``: one table, also used for the step summary.

Paths in findings are relative to the project root; ``prefix`` (the project root relative to the
repository root) is prepended where CI systems need repository paths.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from deploykit.manifest.check import Report
from deploykit.manifest.rules import Finding, Level

FORMATS = ("text", "json", "github", "gitlab", "markdown")
#: GitHub rejects step summaries over 1 MiB; stay well below it.
STEP_SUMMARY_LIMIT = 1000 * 1024

_LEVEL_ORDER = {Level.ERROR: 0, Level.WARNING: 1, Level.INFO: 2}
_GITLAB_SEVERITY = {Level.ERROR: "critical", Level.WARNING: "major", Level.INFO: "info"}
_GITHUB_COMMAND = {Level.ERROR: "error", Level.WARNING: "warning", Level.INFO: "notice"}


def _path(finding: Finding, prefix: str | None) -> str | None:
    if finding.file is None:
        return None
    if not prefix or prefix == ".":
        return finding.file
    return f"{prefix.rstrip('/')}/{finding.file}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 or word == "info" else "s")


def summary_line(report: Report) -> str:
    counts = report.counts()
    parts = [
        _plural(counts["error"], "error"),
        _plural(counts["warning"], "warning"),
        _plural(counts["info"], "info"),
    ]
    if counts["suppressed"]:
        parts.append(f"{counts['suppressed']} suppressed")
    if report.failed:
        verdict = f"FAILED (--fail-on {report.fail_on})"
        if report.incomplete:
            verdict += f"; also INCOMPLETE: {report.incomplete}"
    elif report.incomplete:
        verdict = f"INCOMPLETE: {report.incomplete}"
    else:
        verdict = "OK"
    return f"{', '.join(parts)}; {report.tasks_old} -> {report.tasks_new} tasks. {verdict}"


def _by_task(findings: Iterable[Finding]) -> dict[str, list[Finding]]:
    grouped: dict[str, list[Finding]] = {}
    for item in findings:
        grouped.setdefault(item.task, []).append(item)
    return grouped


# --- text ------------------------------------------------------------------------------------


def render_text(report: Report, console: Any) -> None:
    """Findings grouped by task, most severe first within a task, then the summary line."""
    from rich.markup import escape

    style = {Level.ERROR: "bold red", Level.WARNING: "yellow", Level.INFO: "cyan"}
    console.print(f"deploykit {report.command}: {escape(report.old)} -> {escape(report.new)}", soft_wrap=True)
    for note in report.notes:
        console.print(f"[dim]note: {escape(note)}[/dim]", soft_wrap=True)
    if not report.findings:
        console.print("No changes that affect queued or in-flight tasks.", soft_wrap=True)
    for task, items in _by_task(report.findings).items():
        where = next((f.location for f in items if f.location), None)
        console.print()
        console.print(
            f"[bold]{escape(task)}[/bold]" + (f"  [dim]{escape(where)}[/dim]" if where else ""),
            soft_wrap=True,
        )
        for item in sorted(items, key=lambda f: (f.suppressed, _LEVEL_ORDER[f.level])):
            label = f"{item.level.value.upper():<7}"
            if item.suppressed:
                console.print(
                    f"  [dim]{label} {item.rule} (suppressed: {escape(item.suppressed_by or '')})  "
                    f"{escape(item.message)}[/dim]",
                    soft_wrap=True,
                )
                continue
            console.print(
                f"  [{style[item.level]}]{label}[/] [bold]{item.rule}[/bold]  {escape(item.message)}",
                soft_wrap=True,
            )
            console.print(f"          [dim]hint:[/dim] {escape(item.hint)}", soft_wrap=True)
            console.print(f"          [dim]docs: {escape(item.docs)}[/dim]", soft_wrap=True)
    console.print()
    console.print(summary_line(report), style="bold red" if report.failed else None, soft_wrap=True)


def text(report: Report, *, width: int = 120) -> str:
    """The text rendering without colour, as a string (for ``--report text=PATH``)."""
    import io

    from rich.console import Console

    buffer = io.StringIO()
    render_text(report, Console(file=buffer, no_color=True, width=width, highlight=False, soft_wrap=True))
    return buffer.getvalue()


# --- json ------------------------------------------------------------------------------------


def to_json(report: Report) -> str:
    return json.dumps(report.document(), indent=2, ensure_ascii=False) + "\n"


# --- GitHub ----------------------------------------------------------------------------------


def _escape_data(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(value: str) -> str:
    return _escape_data(value).replace(":", "%3A").replace(",", "%2C")


def github(report: Report, *, prefix: str | None = None) -> str:
    """Workflow-command annotations for unsuppressed findings, errors first, then the summary."""
    lines = []
    active = sorted((f for f in report.findings if not f.suppressed), key=lambda f: _LEVEL_ORDER[f.level])
    for item in active:
        props = []
        path = _path(item, prefix)
        if path:
            props.append(f"file={_escape_property(path)}")
            if item.line:
                props.append(f"line={item.line}")
        props.append(f"title={_escape_property(f'{item.rule} ({item.task})')}")
        message = f"{item.message} Hint: {item.hint} See {item.docs}"
        lines.append(f"::{_GITHUB_COMMAND[item.level]} {','.join(props)}::{_escape_data(message)}")
    if report.incomplete:
        title = _escape_property(f"deploykit {report.command}: incomplete")
        lines.append(f"::warning title={title}::{_escape_data(report.incomplete)}")
    lines.append(f"deploykit {report.command}: {summary_line(report)}")
    return "\n".join(lines) + "\n"


def write_step_summary(report: Report, path: Path, *, prefix: str | None = None) -> None:
    """Append the Markdown table to ``$GITHUB_STEP_SUMMARY``, truncated under GitHub's 1 MiB cap."""
    body = markdown(report, prefix=prefix)
    encoded = body.encode()
    if len(encoded) > STEP_SUMMARY_LIMIT:
        cut = encoded[:STEP_SUMMARY_LIMIT].decode("utf-8", "ignore")
        body = cut[: cut.rfind("\n") + 1] + "\n_Truncated: run `deploykit check --json` for every finding._\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(body)


# --- GitLab ----------------------------------------------------------------------------------


def fingerprint(item: Finding) -> str:
    """Stable across runs: what changed and where, not the wording."""
    key = "\x1f".join([item.rule, item.task, item.parameter or "", item.beat_entry or ""])
    return hashlib.sha256(key.encode()).hexdigest()


def gitlab(
    report: Report, *, prefix: str | None = None, fallback_path: str = "deploykit.manifest.json"
) -> str:
    """A GitLab Code Quality report (``artifacts:reports:codequality``) of unsuppressed findings."""
    issues = [
        {
            "description": f"{item.rule} ({item.task}): {item.message} Hint: {item.hint} See {item.docs}",
            "check_name": item.rule,
            "fingerprint": fingerprint(item),
            "severity": _GITLAB_SEVERITY[item.level],
            "location": {"path": _path(item, prefix) or fallback_path, "lines": {"begin": item.line or 1}},
        }
        for item in report.findings
        if not item.suppressed
    ]
    return json.dumps(issues, indent=2, ensure_ascii=False) + "\n"


# --- Markdown --------------------------------------------------------------------------------


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def markdown(report: Report, *, prefix: str | None = None) -> str:
    """A GitHub-flavoured Markdown section: summary line and one table of every finding."""
    lines = [
        f"### deploykit {report.command}: task signatures",
        "",
        f"`{_cell(report.old)}` → `{_cell(report.new)}`: **{summary_line(report)}**",
        "",
    ]
    for note in report.notes:
        lines += [f"_Note: {_cell(note)}_", ""]
    if not report.findings:
        lines.append("No changes that affect queued or in-flight tasks.")
        return "\n".join(lines) + "\n"
    lines += [
        "| level | rule | task | location | what breaks | how to ship it |",
        "|---|---|---|---|---|---|",
    ]
    ordered = sorted(report.findings, key=lambda f: (f.suppressed, _LEVEL_ORDER[f.level], f.task))
    for item in ordered:
        level = item.level.value + (f" (suppressed: {item.suppressed_by})" if item.suppressed else "")
        path = _path(item, prefix)
        where = f"`{path}:{item.line}`" if path and item.line else (f"`{path}`" if path else "")
        lines.append(
            f"| {_cell(level)} | [`{item.rule}`]({item.docs}) | `{_cell(item.task)}` | {_cell(where)} | "
            f"{_cell(item.message)} | {_cell(item.hint)} |"
        )
    return "\n".join(lines) + "\n"


def render(report: Report, fmt: str, *, prefix: str | None = None, fallback_path: str | None = None) -> str:
    """Any format as a string (text without colour)."""
    if fmt == "text":
        return text(report)
    if fmt == "json":
        return to_json(report)
    if fmt == "github":
        return github(report, prefix=prefix)
    if fmt == "gitlab":
        return gitlab(report, prefix=prefix, fallback_path=fallback_path or "deploykit.manifest.json")
    if fmt == "markdown":
        return markdown(report, prefix=prefix)
    raise ValueError(fmt)
