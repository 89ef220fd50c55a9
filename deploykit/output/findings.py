"""One renderer per output format for every command's findings (:class:`~deploykit.findings.Finding`).

``check``/``diff`` (:mod:`deploykit.output.check`), ``doctor`` (:mod:`deploykit.output.doctor`)
and ``scan`` (:mod:`deploykit.output.scan`) only add their heading and summary line:

* ``text``: :func:`render_text`, one block per finding (level, rule, message, then ``where``,
  ``why``, ``hint`` and ``docs`` lines), grouped under their task when they have one; colour
  only on a TTY, ``NO_COLOR`` honoured;
* ``json``: :func:`finding_json`, the same object in every document;
* ``github``: :func:`github`, workflow-command annotations (``::error file=…,line=…,title=…::…``)
  and the summary line, and :func:`write_step_summary` for ``$GITHUB_STEP_SUMMARY``;
* ``gitlab``: :func:`gitlab`, a Code Quality report (GitLab's Code Climate subset);
* ``markdown``: :func:`markdown`, one table, also the step summary.

**GitHub truncation, the one policy.** GitHub shows at most 10 annotations of each kind (error,
warning, notice) per step and drops the rest
(https://docs.github.com/en/actions/reference/workflows-and-actions/workflow-commands). So at most
:data:`GITHUB_ANNOTATIONS_PER_KIND` of each kind are written, most severe first, followed by one
plain line counting those left out; every finding is in the step summary (capped at
:data:`STEP_SUMMARY_LIMIT` bytes, below GitHub's 1 MiB, cut at a row with a note) and in ``--json``.

Every unsuppressed finding links to its rule's page (:attr:`Finding.docs`): a ``docs:`` line in
text, ``docs`` in JSON, ``See <url>`` ending annotations and GitLab descriptions (GitLab's subset
has no link field: ``description``, ``check_name``, ``fingerprint``, ``severity``, ``location``),
the rule ID as a link in Markdown. Suppressed findings are listed (text, JSON, Markdown) but never
annotated. Paths in findings are relative to the project root; ``prefix`` (the project root
relative to the repository root) is prepended where CI systems need repository paths.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit.findings import Finding, Level, worst_first

FORMATS = ("text", "json", "github", "gitlab", "markdown")
#: GitHub shows only this many annotations of each kind per step.
GITHUB_ANNOTATIONS_PER_KIND = 10
#: GitHub rejects step summaries over 1 MiB; stay well below it.
STEP_SUMMARY_LIMIT = 1000 * 1024

_GITLAB_SEVERITY = {Level.ERROR: "critical", Level.WARNING: "major", Level.INFO: "info"}
_GITHUB_COMMAND = {Level.ERROR: "error", Level.WARNING: "warning", Level.INFO: "notice"}
_STYLE = {Level.ERROR: "bold red", Level.WARNING: "yellow", Level.INFO: "cyan"}


@dataclass(frozen=True)
class Heading:
    """What a command says around its findings (every format shows the same)."""

    #: ``check``, ``diff``, ``doctor``, ``scan``: ``deploykit <command>: …`` in CI output.
    command: str
    #: The one-line verdict (counts and OK / FAILED / INCOMPLETE).
    summary: str
    #: The Markdown section's title.
    title: str
    #: The Markdown line under the title (default: the summary in bold).
    intro: str | None = None
    notes: tuple[str, ...] = ()
    #: Why the result is incomplete (a warning annotation), when it is.
    incomplete: str | None = None
    #: What to say when there is no finding.
    empty: str = "No finding."


def repo_path(finding: Finding, prefix: str | None) -> str | None:
    """The finding's file relative to the repository root (``prefix`` is the project root in it)."""
    if finding.file is None:
        return None
    if not prefix or prefix == ".":
        return finding.file
    return f"{prefix.rstrip('/')}/{finding.file}"


# --- json ------------------------------------------------------------------------------------


def finding_json(finding: Finding) -> dict[str, Any]:
    """The finding as plain JSON values: the same object in every ``--json`` document."""
    return {
        "rule": finding.rule,
        "level": finding.level.value,
        "task": finding.task,
        "parameter": finding.parameter,
        "beat_entry": finding.beat_entry,
        "message": finding.message,
        "hint": finding.hint,
        "docs": finding.docs,
        "file": finding.file,
        "line": finding.line,
        "suppressed": finding.suppressed,
        "suppressed_by": finding.suppressed_by,
        "data": dict(finding.data) if finding.data is not None else None,
        "why": finding.why,
        "where": list(finding.where),
    }


# --- text ------------------------------------------------------------------------------------


def _by_task(findings: Iterable[Finding]) -> dict[str | None, list[Finding]]:
    grouped: dict[str | None, list[Finding]] = {}
    for item in findings:
        grouped.setdefault(item.task, []).append(item)
    return grouped


def render_text(findings: Sequence[Finding], out: Any, *, empty: str | None = None) -> None:
    """One block per finding, most severe first; findings about a task under its name.

    ``out`` is a rich console. Values are printed as text, never as markup. Wrapped lines stay
    indented under their label, without trailing spaces.
    """
    from rich.text import Text

    width = max(int(getattr(out, "width", 100) or 100), 60)
    if not findings and empty:
        out.print(Text(empty), soft_wrap=True)
    for task, items in _by_task(findings).items():
        indent = ""
        if task is not None:
            where = next((f.location for f in items if f.location), None)
            out.print()
            out.print(Text.assemble((task, "bold"), ("  " + where if where else "", "dim")), soft_wrap=True)
            indent = "  "
        for item in worst_first(items):
            label = f"{item.level.value.upper():<7}"
            if item.suppressed:
                line = f"{indent}{label} {item.rule} (suppressed: {item.suppressed_by or ''})  {item.message}"
                out.print(Text(line, style="dim"), soft_wrap=True)
                continue
            out.print(
                Text.assemble(
                    indent, (label, _STYLE[item.level]), " ", (item.rule, "bold"), "  ", item.message
                ),
                soft_wrap=True,
            )
            pad = indent + " " * 8
            where = "" if task is not None else (item.location or ", ".join(item.where))
            labelled = (("where:", where), ("why:", item.why), ("hint:", item.hint), ("docs:", item.docs))
            for name, value in labelled:
                if value:
                    room = width - len(pad) - len(name) - 1
                    # Links and setting names are never broken across lines.
                    lines = textwrap.wrap(value, room, break_long_words=False, break_on_hyphens=False)
                    first = f"{pad}{name} {(lines or [''])[0]}"
                    rest = [" " * (len(pad) + len(name) + 1) + line for line in lines[1:]]
                    style = "dim" if name == "docs:" else ""
                    out.print(Text("\n".join([first, *rest]), style=style), soft_wrap=True)
            if task is None:
                out.print()


# --- GitHub ----------------------------------------------------------------------------------


def _escape_data(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(value: str) -> str:
    return _escape_data(value).replace(":", "%3A").replace(",", "%2C")


def annotation(finding: Finding, *, prefix: str | None = None) -> str:
    """One workflow command: ``::error file=…,line=…,title=RULE (task)::message Hint: … See <docs>``."""
    props = []
    path = repo_path(finding, prefix)
    if path:
        props.append(f"file={_escape_property(path)}")
        if finding.line:
            props.append(f"line={finding.line}")
    title = f"{finding.rule} ({finding.subject})" if finding.subject else finding.rule
    props.append(f"title={_escape_property(title)}")
    message = f"{finding.message} Hint: {finding.hint} See {finding.docs}"
    return f"::{_GITHUB_COMMAND[finding.level]} {','.join(props)}::{_escape_data(message)}"


def github(
    findings: Sequence[Finding],
    heading: Heading,
    *,
    prefix: str | None = None,
    per_kind: int = GITHUB_ANNOTATIONS_PER_KIND,
) -> str:
    """Annotations for the unsuppressed findings (at most ``per_kind`` of each kind, errors first),
    a warning when the result is incomplete, a line counting what was left out, the summary line."""
    candidates: list[tuple[Level, str]] = [
        (item.level, annotation(item, prefix=prefix)) for item in worst_first(findings) if not item.suppressed
    ]
    if heading.incomplete:
        title = _escape_property(f"deploykit {heading.command}: incomplete")
        # Before the warnings: it says why the verdict cannot be OK.
        first_warning = next((i for i, (lvl, _) in enumerate(candidates) if lvl is not Level.ERROR), None)
        at = len(candidates) if first_warning is None else first_warning
        candidates.insert(at, (Level.WARNING, f"::warning title={title}::{_escape_data(heading.incomplete)}"))
    shown: Counter[Level] = Counter()
    lines = []
    for level, line in candidates:
        shown[level] += 1
        if shown[level] <= per_kind:
            lines.append(line)
    left_out = sum(max(0, n - per_kind) for n in shown.values())
    if left_out:
        lines.append(
            f"deploykit {heading.command}: {left_out} more finding(s) not annotated (GitHub shows "
            f"{per_kind} per kind per step); every finding is in the step summary and in --json"
        )
    lines.append(f"deploykit {heading.command}: {heading.summary}")
    return "\n".join(lines) + "\n"


def write_step_summary(text: str, path: Path) -> None:
    """Append ``text`` (Markdown) to ``$GITHUB_STEP_SUMMARY``, cut at a line under the size cap."""
    encoded = text.encode()
    if len(encoded) > STEP_SUMMARY_LIMIT:
        cut = encoded[:STEP_SUMMARY_LIMIT].decode("utf-8", "ignore")
        note = "\n_Truncated: run the same command with `--json` for every finding._\n"
        text = cut[: cut.rfind("\n") + 1] + note
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


# --- GitLab ----------------------------------------------------------------------------------


def fingerprint(item: Finding) -> str:
    """Stable across runs: which rule, about what and where, not the wording."""
    key = "\x1f".join([item.rule, item.task or item.file or "", item.parameter or "", item.beat_entry or ""])
    return hashlib.sha256(key.encode()).hexdigest()


def gitlab(findings: Sequence[Finding], *, prefix: str | None = None, fallback_path: str) -> str:
    """A GitLab Code Quality report (``artifacts:reports:codequality``) of unsuppressed findings.

    GitLab needs a path for every issue: ``fallback_path`` for findings without a file.
    """
    issues = [
        {
            "description": f"{item.rule} ({item.subject}): {item.message} Hint: {item.hint} See {item.docs}"
            if item.subject
            else f"{item.rule}: {item.message} Hint: {item.hint} See {item.docs}",
            "check_name": item.rule,
            "fingerprint": fingerprint(item),
            "severity": _GITLAB_SEVERITY[item.level],
            "location": {
                "path": repo_path(item, prefix) or fallback_path,
                "lines": {"begin": item.line or 1},
            },
        }
        for item in findings
        if not item.suppressed
    ]
    return json.dumps(issues, indent=2, ensure_ascii=False) + "\n"


# --- Markdown --------------------------------------------------------------------------------


def cell(value: str) -> str:
    """A Markdown table cell: pipes escaped, on one line."""
    return value.replace("|", "\\|").replace("\n", " ")


def markdown(findings: Sequence[Finding], heading: Heading, *, prefix: str | None = None) -> str:
    """A GitHub-flavoured Markdown section: title, summary, notes and one table of every finding."""
    lines = [f"### {heading.title}", "", heading.intro or f"**{cell(heading.summary)}**", ""]
    for note in heading.notes:
        lines += [f"_Note: {cell(note)}_", ""]
    if not findings:
        lines.append(heading.empty)
        return "\n".join(lines) + "\n"
    lines += [
        "| level | rule | task | location | what breaks | how to fix |",
        "|---|---|---|---|---|---|",
    ]
    ordered = sorted(findings, key=lambda f: (f.suppressed, -f.level.rank, f.task or ""))
    for item in ordered:
        level = item.level.value + (f" (suppressed: {item.suppressed_by})" if item.suppressed else "")
        path = repo_path(item, prefix)
        where = f"`{path}:{item.line}`" if path and item.line else (f"`{path}`" if path else "")
        where = where or ", ".join(item.where)
        task = f"`{cell(item.task)}`" if item.task else ""
        lines.append(
            f"| {cell(level)} | [`{item.rule}`]({item.docs}) | {task} | {cell(where)} | "
            f"{cell(item.message)} | {cell(item.hint)} |"
        )
    return "\n".join(lines) + "\n"
