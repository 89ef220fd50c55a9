"""``deploykit doctor``: find the settings that make a deploy lose or duplicate tasks.

``model`` holds the plain data, ``gather`` asks the app, the workers and the broker (the only
impure part), ``process_managers`` reads supervisor/systemd/Kubernetes files, and ``checks`` are
pure functions from an :class:`~deploykit.doctor.model.Audit` to
:class:`~deploykit.doctor.model.Finding` objects. README.md explains each finding ID (anchors ``dk-<id>``).
"""

from deploykit.doctor.checks import fails, run_checks
from deploykit.doctor.model import Audit, Finding, Level

__all__ = ["Audit", "Finding", "Level", "fails", "run_checks"]
