"""Where every finding is explained: one stable, absolute documentation URL per rule ID.

Doctor, manifest and scan findings link here, and the links end up in CI annotations, step
summaries and JSON read far from this repository, so they must be absolute (a relative
``README.md#…`` inside a user's GitHub annotation points at the *user's* README). The scheme is
``<base>/<rule-id>/`` with the ID in lower case and ``-`` for ``_`` (``TASK_REMOVED`` →
``…/rules/task-removed/``, ``acks-late-without-reject`` → ``…/rules/acks-late-without-reject/``).

The base is configurable for a mirror or an internal copy of the docs: ``DEPLOYKIT_DOCS_URL``,
then ``[tool.deploykit] docs_url`` in the nearest ``pyproject.toml``, then :data:`DEFAULT_DOCS_URL`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from deploykit.errors import UsageError

#: The published rule pages (one per rule ID) of the stable release.
DEFAULT_DOCS_URL = "https://deploykit.readthedocs.io/en/stable/rules/"
DOCS_URL_ENV = "DEPLOYKIT_DOCS_URL"
_ABSOLUTE = re.compile(r"^[a-z][a-z0-9+.\-]*://\S+$", re.IGNORECASE)


def rule_slug(rule_id: str) -> str:
    """``TASK_REMOVED`` → ``task-removed``; doctor's IDs are already in this form."""
    return rule_id.strip().lower().replace("_", "-")


def _checked(value: object, source: str) -> str:
    if not isinstance(value, str) or not _ABSOLUTE.match(value.strip()):
        raise UsageError(f"{source} must be an absolute URL like {DEFAULT_DOCS_URL!r}, got {value!r}")
    return value.strip()


@lru_cache(maxsize=8)
def _project_base(cwd: Path) -> str | None:
    from deploykit.config import find_pyproject, read_project_table

    path = find_pyproject(cwd)
    value = read_project_table(path).get("docs_url")
    return None if value is None else _checked(value, f"{path}: [tool.deploykit] docs_url")


def docs_base(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """The documentation base URL: the environment, then ``pyproject.toml``, then the default."""
    environ = os.environ if environ is None else environ
    if environ.get(DOCS_URL_ENV):
        return _checked(environ[DOCS_URL_ENV], DOCS_URL_ENV)
    return _project_base((cwd or Path.cwd()).resolve()) or DEFAULT_DOCS_URL


def rule_url(rule_id: str, base: str | None = None) -> str:
    """The page that explains ``rule_id``."""
    return f"{(base or docs_base()).rstrip('/')}/{rule_slug(rule_id)}/"
