"""The one findings vocabulary of deploykit: :class:`Level`, :class:`Finding`, rule IDs.

``check``/``diff`` (task signatures, :mod:`deploykit.manifest.rules`), ``check --broker`` and
``scan`` (waiting messages, :mod:`deploykit.scan.findings`) and ``doctor`` (risky settings,
:mod:`deploykit.doctor.checks`) all report :class:`Finding` objects, and every output format
renders them with one function in :mod:`deploykit.output.findings`.

Rule IDs are UPPER_SNAKE (``PARAM_RENAMED``, ``ACKS_LATE_WITHOUT_REJECT``): they are what users
write in ``[tool.deploykit] ignore`` and ``# deploykit: ignore[...]``. Each rule's page is
``<docs>/<rule-id>/`` in lower case with ``-`` for ``_`` (:func:`deploykit.docs.rule_url`), so
doctor's former kebab-case IDs (``acks-late-without-reject``) still name the same page, and
:func:`canonical_rule_id` turns them into the current form.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from deploykit.errors import UsageError

#: ``--fail-on`` values, for every command that reports findings.
FAIL_ON = ("error", "warning", "info", "never")


class Level(str, Enum):
    """How bad a finding is; ``--fail-on`` compares against these.

    ``error``: tasks are lost, fail or run with wrong arguments (or anyone with broker access can
    run code); ``warning``: tasks run twice, or are lost under some conditions; ``info``: a
    trade-off worth knowing.
    """

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"error": 3, "warning": 2, "info": 1}[self.value]


def canonical_rule_id(rule_id: str) -> str:
    """A rule ID in the one style: ``acks-late-without-reject`` → ``ACKS_LATE_WITHOUT_REJECT``."""
    return rule_id.strip().upper().replace("-", "_")


@dataclass(frozen=True)
class Finding:
    """One problem: which rule, how bad, what breaks and how to fix it, and where.

    ``task`` is the task a signature or waiting-message finding is about (``None`` for doctor's,
    which are about settings: ``where`` names the configuration sources, ``app`` or
    ``worker w1@host``); ``file``/``line`` point into the code or a process-manager file when known.
    """

    rule: str
    level: Level
    task: str | None
    #: What breaks, in one sentence (doctor: the finding's title).
    message: str
    #: How to ship it anyway, or how to fix the setting.
    hint: str
    #: Why it loses or duplicates tasks, when the message alone does not say (doctor).
    why: str | None = None
    #: The configuration sources it was found in (doctor: ``app``, ``worker w1@host``, a path).
    where: tuple[str, ...] = ()
    file: str | None = None
    line: int | None = None
    parameter: str | None = None
    beat_entry: str | None = None
    suppressed: bool = False
    #: ``"inline"`` or the ``[tool.deploykit] ignore`` entry that matched.
    suppressed_by: str | None = None
    #: The numbers behind the message, for machines (plain JSON values): ``WAITING_*`` findings
    #: carry ``count``, ``beat_entries``, ``locations``, ``reasons``, ``sample_ids``,
    #: ``earliest_eta``, ``latest_eta``, ``expired``. ``None`` for the other rules.
    data: Mapping[str, Any] | None = None

    @property
    def docs(self) -> str:
        """The rule's page in the documentation (an absolute URL, see :mod:`deploykit.docs`)."""
        from deploykit.docs import rule_url

        return rule_url(self.rule)

    @property
    def location(self) -> str | None:
        """``file:line`` (or ``file``) when the finding points into a file."""
        if self.file is None:
            return None
        return f"{self.file}:{self.line}" if self.line else self.file

    @property
    def subject(self) -> str:
        """What the finding is about, for titles and tables: the task, else the sources."""
        return self.task or ", ".join(self.where)

    def suppress(self, by: str) -> Finding:
        return replace(self, suppressed=True, suppressed_by=by)


def fail_threshold(fail_on: str) -> int | None:
    """The lowest level rank that fails (``None`` for ``never``)."""
    value = fail_on.strip().lower()
    if value not in FAIL_ON:
        raise UsageError(f"invalid --fail-on {fail_on!r}: use one of {', '.join(FAIL_ON)}")
    return None if value == "never" else Level(value).rank


def failing(findings: Iterable[Finding], fail_on: str) -> tuple[Finding, ...]:
    """The unsuppressed findings at or above ``fail_on``."""
    threshold = fail_threshold(fail_on)
    if threshold is None:
        return ()
    return tuple(f for f in findings if not f.suppressed and f.level.rank >= threshold)


def counts(findings: Iterable[Finding], *, suppressed: bool = False) -> dict[str, int]:
    """Findings per level (``error``, ``warning``, ``info``), plus ``suppressed`` when asked.

    Without ``suppressed``, suppressed findings count at their level (doctor has no suppressions).
    """
    result = {level.value: 0 for level in Level}
    if suppressed:
        result["suppressed"] = 0
    for item in findings:
        result["suppressed" if suppressed and item.suppressed else item.level.value] += 1
    return result


def worst_first(findings: Iterable[Finding]) -> list[Finding]:
    """Unsuppressed before suppressed, then errors, warnings, infos; otherwise in their order."""
    return sorted(findings, key=lambda f: (f.suppressed, -f.level.rank))
