"""The use cases behind ``manifest diff``, ``check`` and ``manifest snapshot --check``.

Each returns plain data (:class:`Report`, :class:`Staleness`); the CLI only renders and exits.
``check`` builds one :class:`Report` from a list of findings so that other sources (the broker scan
of ``check --broker``) can add theirs to the same report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploykit.findings import FAIL_ON as FAIL_ON
from deploykit.findings import Finding, counts, failing
from deploykit.findings import fail_threshold as fail_threshold
from deploykit.manifest import model
from deploykit.manifest.diff import diff
from deploykit.manifest.suppress import IgnoreEntry, apply_suppressions
from deploykit.output.documents import schema_name
from deploykit.output.humanize import listed

if TYPE_CHECKING:
    from deploykit.scan.engine import Report as ScanReport

#: Its version, with the others, in :data:`deploykit.output.documents.SCHEMAS`.
REPORT_SCHEMA = schema_name("findings")


@dataclass(frozen=True)
class Report:
    """Findings of one comparison, plus what was compared."""

    command: str
    old: str
    new: str
    findings: tuple[Finding, ...]
    fail_on: str = "error"
    #: Tasks in the old and the new side (for the summary line).
    tasks_old: int = 0
    tasks_new: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: ``check --broker`` only: "N of M waiting message(s) not checked (why; how)" when some
    #: waiting messages could not be read. Such a report is never OK: it exits 5 (``INCOMPLETE``)
    #: unless a finding fails it (exit 1).
    incomplete: str | None = None
    #: The numbers behind :attr:`incomplete` (plain JSON values): ``waiting``, ``unchecked``,
    #: ``unchecked_unknown``, ``locations[{location, count, reason, remedy}]``.
    unchecked: Mapping[str, Any] | None = None

    def counts(self) -> dict[str, int]:
        return counts(self.findings, suppressed=True)

    @property
    def failing(self) -> tuple[Finding, ...]:
        """The unsuppressed findings at or above ``fail_on``."""
        return failing(self.findings, self.fail_on)

    @property
    def failed(self) -> bool:
        return bool(self.failing)

    @property
    def verdict(self) -> str:
        """``failed`` (exit 1) wins over ``incomplete`` (exit 5), which wins over ``ok`` (exit 0)."""
        if self.failed:
            return "failed"
        return "incomplete" if self.incomplete else "ok"

    def document(self) -> dict[str, Any]:
        """The ``--json`` document (schema ``deploykit.findings/1``)."""
        from deploykit.output.findings import finding_json

        return {
            "schema": REPORT_SCHEMA,
            "command": self.command,
            "old": self.old,
            "new": self.new,
            "tasks": {"old": self.tasks_old, "new": self.tasks_new},
            "fail_on": self.fail_on,
            "failed": self.failed,
            "verdict": self.verdict,
            "incomplete": (
                None if self.incomplete is None else {"summary": self.incomplete, **(self.unchecked or {})}
            ),
            "counts": self.counts(),
            "notes": list(self.notes),
            "findings": [finding_json(f) for f in self.findings],
        }


def compare(
    old: model.Manifest,
    new: model.Manifest,
    *,
    command: str,
    old_label: str,
    new_label: str,
    ignore: Sequence[IgnoreEntry] = (),
    fail_on: str = "error",
    extra: Iterable[Finding] = (),
) -> Report:
    """Diff two manifests, apply suppressions, and wrap the result."""
    fail_threshold(fail_on)
    findings = apply_suppressions([*diff(old, new), *extra], old, new, ignore)
    notes = []
    if old.generator and new.generator and dict(old.generator) != dict(new.generator):
        before = ", ".join(f"{k} {v}" for k, v in sorted(old.generator.items()))
        after = ", ".join(f"{k} {v}" for k, v in sorted(new.generator.items()))
        notes.append(f"made with {before}; compared with {after}")
    return Report(
        command=command,
        old=old_label,
        new=new_label,
        findings=tuple(findings),
        fail_on=fail_on.strip().lower(),
        tasks_old=len(old.tasks),
        tasks_new=len(new.tasks),
        notes=tuple(notes),
    )


def diff_files(
    old_path: Path, new_path: Path, *, ignore: Sequence[IgnoreEntry] = (), fail_on: str = "error"
) -> Report:
    """``deploykit manifest diff OLD NEW``."""
    old = model.read(old_path)
    new = model.read(new_path)
    return compare(
        old,
        new,
        command="diff",
        old_label=str(old_path),
        new_label=str(new_path),
        ignore=ignore,
        fail_on=fail_on,
    )


def check_code(
    manifest_path: Path,
    app_spec: str | None,
    root: Path,
    *,
    ignore: Sequence[IgnoreEntry] = (),
    fail_on: str = "error",
    app: Any = None,
) -> Report:
    """``deploykit check``: the committed manifest against the live code."""
    from deploykit.manifest.collect import snapshot

    fail_threshold(fail_on)
    old = model.read(manifest_path)  # read first: a missing manifest should not cost an import
    new = snapshot(app_spec, root, app=app)
    return compare(
        old,
        new,
        command="check",
        old_label=str(manifest_path),
        new_label=f"code ({app_spec})" if app_spec else "code",
        ignore=ignore,
        fail_on=fail_on,
    )


def with_waiting(report: Report, scanned: ScanReport, new: model.Manifest, *, broker: str | None) -> Report:
    """``check --broker``: ``report`` with the waiting messages' verdicts (``scanned``, judged
    against ``new``) as ``WAITING_*`` findings, what the scan read in the notes, and what it could
    not read as :attr:`Report.incomplete` and :attr:`Report.unchecked`.

    A beat entry is reported once: the app's ``beat_schedule`` entries are judged by the manifest
    rules (``BEAT_ARGS_UNBOUND``, ``BEAT_TASK_MISSING``, with the entry's name and the task's
    line), so the scan leaves them out; ``WAITING_*`` findings count the waiting messages and the
    django-celery-beat rows that are not copies of ``beat_schedule`` entries.
    """
    import dataclasses

    from deploykit.scan.findings import scan_findings, unchecked_data

    # django-celery-beat rows checked, if any, are in the scan's own notes.
    checked = f"broker {broker}: {scanned.scanned} waiting message(s) checked"
    return dataclasses.replace(
        report,
        findings=(*report.findings, *scan_findings(scanned, new)),
        notes=(*report.notes, checked, *scanned.notes),
        incomplete=scanned.incomplete_summary(),
        unchecked=unchecked_data(scanned) if scanned.incomplete else None,
    )


@dataclass(frozen=True)
class Staleness:
    """``manifest snapshot --check``: does the committed file still describe the code?"""

    path: str
    exists: bool
    stale: bool
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    beat_changed: bool = False
    #: Beat entries by name: new in the code, gone from it, or with other task/args/schedule/queue.
    beat_added: tuple[str, ...] = ()
    beat_removed: tuple[str, ...] = ()
    beat_modified: tuple[str, ...] = ()
    #: The file describes the code but was written differently (other versions, formatting).
    reformatted: bool = False

    def describe(self, load_errors: int = 0) -> str:
        """One line; ``load_errors``: errors while loading the app, which may explain the change."""
        if not self.exists:
            return f"{self.path} does not exist: run `deploykit manifest snapshot` and commit it"
        if not self.stale:
            return f"{self.path} is up to date"
        parts = []
        for label, names in (
            ("tasks added", self.added),
            ("tasks removed", self.removed),
            ("tasks changed", self.changed),
            ("beat entries added", self.beat_added),
            ("beat entries removed", self.beat_removed),
            ("beat entries changed", self.beat_modified),
        ):
            if names:
                parts.append(f"{label}: {listed(names)}")
        if self.beat_changed and not (self.beat_added or self.beat_removed or self.beat_modified):
            parts.append("beat schedule reordered")
        fix = "run `deploykit manifest snapshot` and commit it"
        if load_errors:
            # A handler that raised while loading (no database in CI) quietly drops what it adds.
            fix = f"first check the {load_errors} error(s) while loading the app (warned above), then {fix}"
        return f"{self.path} is stale ({'; '.join(parts)}): {fix}"


def staleness(path: Path, current: model.Manifest) -> Staleness:
    """Compare the file at ``path`` with ``current`` (the library versions that wrote it do not count)."""
    if not path.exists():
        return Staleness(path=str(path), exists=False, stale=True)
    committed = model.read(path)
    if committed.content_equal(current):
        text = path.read_bytes()
        return Staleness(
            path=str(path), exists=True, stale=False, reformatted=text != model.dumps(committed).encode()
        )
    added = tuple(sorted(set(current.tasks) - set(committed.tasks)))
    removed = tuple(sorted(set(committed.tasks) - set(current.tasks)))
    changed = tuple(
        sorted(n for n in set(current.tasks) & set(committed.tasks) if current.tasks[n] != committed.tasks[n])
    )
    old_beat = {e.name: e.key() for e in committed.beat}
    new_beat = {e.name: e.key() for e in current.beat}
    return Staleness(
        path=str(path),
        exists=True,
        stale=True,
        added=added,
        removed=removed,
        changed=changed,
        beat_changed={e.key() for e in committed.beat} != {e.key() for e in current.beat},
        beat_added=tuple(sorted(set(new_beat) - set(old_beat))),
        beat_removed=tuple(sorted(set(old_beat) - set(new_beat))),
        beat_modified=tuple(sorted(n for n in set(old_beat) & set(new_beat) if old_beat[n] != new_beat[n])),
    )
