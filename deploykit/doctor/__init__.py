"""``deploykit doctor``: find the settings that make a deploy lose or duplicate tasks.

``model`` holds the plain data, ``gather`` asks the app, the workers and the broker (the only
impure part), ``process_managers`` reads supervisor/systemd/Kubernetes files, and ``checks`` are
pure functions from an :class:`~deploykit.doctor.model.Audit` to
:class:`~deploykit.findings.Finding` objects (rule IDs like ``ACKS_LATE_WITHOUT_REJECT``). README.md
explains each rule (anchors ``dk-<rule-id>``, lower case with ``-`` for ``_``).
"""

from deploykit.doctor.checks import fails, run_checks
from deploykit.doctor.model import Audit, Finding, Level

__all__ = ["Audit", "Finding", "Level", "fails", "run_checks"]
