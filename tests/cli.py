"""Running the real ``deploykit`` command in a subprocess, as a user would, for the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def clean_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without anything that configures deploykit or a CI, plus ``env``."""
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DEPLOYKIT_", "GITHUB_", "CI_")) and key != "DJANGO_SETTINGS_MODULE"
    }
    clean.update({"NO_COLOR": "1", "COLUMNS": "200"})
    clean.update(env or {})
    return clean


def run_deploykit(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path = ROOT, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m deploykit ARGS`` with a clean environment; never raises on a non-zero exit."""
    return subprocess.run(
        [sys.executable, "-m", "deploykit", *args],
        capture_output=True,
        text=True,
        env=clean_env(env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
