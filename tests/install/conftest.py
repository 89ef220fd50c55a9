"""The install-beside test (`make test-real`): slow, it builds virtual environments.

Collected only when DEPLOYKIT_REAL=1, like tests/real: `make test` must not create venvs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if os.environ.get("DEPLOYKIT_REAL") != "1" and collection_path.name.startswith("test_"):
        return True
    return None
