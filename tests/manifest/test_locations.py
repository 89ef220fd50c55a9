"""Locations of installed tasks: package-relative, mapped to the checkout when it holds the same file.

The tasks live in a package on ``sys.path`` outside the project (as in ``site-packages`` of an image
built from a wheel); the project is a checkout with a ``src/`` layout, which is not importable as is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deploykit.manifest.locations import SourcePaths
from tests.cli import run_deploykit

APP = """\
from celery import Celery

app = Celery("acme", broker="memory://")
app.conf.imports = ["acme_tasks.billing.tasks"]
"""

TASKS = """\
from acme_tasks.celery_app import app


@app.task(name="acme.charge")
def charge(order_id, amount):
    return order_id, amount


@app.task(name="acme.refund")  # deploykit: ignore[PARAM_REMOVED]
def refund(order_id):
    return order_id
"""


def _write_package(base: Path, tasks: str = TASKS) -> None:
    package = base / "acme_tasks"
    (package / "billing").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "celery_app.py").write_text(APP)
    (package / "billing" / "__init__.py").write_text("")
    (package / "billing" / "tasks.py").write_text(tasks)


@pytest.fixture
def installed(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site-packages"
    _write_package(site)
    return {"PYTHONPATH": str(site)}


def _snapshot(cwd: Path, env: dict[str, str]) -> dict:
    result = run_deploykit(
        "manifest", "snapshot", "-A", "acme_tasks.celery_app", "-o", "m.json", cwd=cwd, env=env
    )
    assert result.returncode == 0, result.stderr
    return json.loads((cwd / "m.json").read_text())["tasks"]


def test_installed_tasks_get_a_package_relative_location(tmp_path: Path, installed: dict[str, str]) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tasks = _snapshot(elsewhere, installed)
    assert (tasks["acme.charge"]["file"], tasks["acme.charge"]["line"]) == ("acme_tasks/billing/tasks.py", 4)
    assert (tasks["acme.refund"]["file"], tasks["acme.refund"]["line"]) == ("acme_tasks/billing/tasks.py", 9)
    assert tasks["acme.refund"]["ignore"] == ["PARAM_REMOVED"]


def test_installed_tasks_map_to_the_checkout_for_annotations_and_suppressions(
    tmp_path: Path, installed: dict[str, str]
) -> None:
    checkout = tmp_path / "repo"
    _write_package(checkout / "src")
    tasks = _snapshot(checkout, installed)
    assert (tasks["acme.charge"]["file"], tasks["acme.charge"]["line"]) == (
        "src/acme_tasks/billing/tasks.py",
        4,
    )

    # The previous release had refund(order_id, reason): the removal is deliberate and suppressed
    # inline; charge gained nothing. The CI annotation lands on the checkout's file and line.
    old = json.loads((checkout / "m.json").read_text())
    old["tasks"]["acme.refund"]["parameters"].append(
        {
            "name": "reason",
            "kind": "POSITIONAL_OR_KEYWORD",
            "has_default": False,
            "default": None,
            "annotation": None,
        }
    )
    old["tasks"]["acme.charge"]["parameters"].append(
        {
            "name": "currency",
            "kind": "POSITIONAL_OR_KEYWORD",
            "has_default": False,
            "default": None,
            "annotation": None,
        }
    )
    (checkout / "old.json").write_text(json.dumps(old))
    check = run_deploykit(
        "check",
        "-A",
        "acme_tasks.celery_app",
        "--manifest",
        "old.json",
        "--format",
        "json",
        cwd=checkout,
        env=installed,
    )
    findings = {(f["rule"], f["task"]): f for f in json.loads(check.stdout)["findings"]}
    removed = findings[("PARAM_REMOVED", "acme.charge")]
    assert (removed["file"], removed["line"]) == ("src/acme_tasks/billing/tasks.py", 4)
    assert findings[("PARAM_REMOVED", "acme.refund")]["suppressed"] is True
    github = run_deploykit(
        "check",
        "-A",
        "acme_tasks.celery_app",
        "--manifest",
        "old.json",
        "--format",
        "github",
        cwd=checkout,
        env=installed,
    )
    assert "file=src/acme_tasks/billing/tasks.py,line=4" in github.stdout, github.stdout


def test_a_checkout_with_other_code_keeps_the_package_location(
    tmp_path: Path, installed: dict[str, str]
) -> None:
    checkout = tmp_path / "repo"
    _write_package(checkout / "src", TASKS.replace("def charge(", "\n\ndef charge("))
    tasks = _snapshot(checkout, installed)
    assert (tasks["acme.charge"]["file"], tasks["acme.charge"]["line"]) == ("acme_tasks/billing/tasks.py", 4)


def test_source_paths_prefer_the_project_then_the_deepest_import_root(tmp_path: Path) -> None:
    root, site = tmp_path / "repo", tmp_path / "venv" / "site-packages"
    for folder in (root / "pkg", site / "pkg"):
        folder.mkdir(parents=True)
        (folder / "mod.py").write_text("x = 1\n")
    paths = SourcePaths(root, import_roots=[str(tmp_path / "venv"), str(site), str(root), ""])
    assert paths.relative(str(root / "pkg" / "mod.py")) == "pkg/mod.py"
    # the same content in the flat checkout: mapped there
    assert paths.relative(str(site / "pkg" / "mod.py")) == "pkg/mod.py"
    (site / "pkg" / "other.py").write_text("y = 2\n")
    assert paths.relative(str(site / "pkg" / "other.py")) == "pkg/other.py"  # package path
    assert SourcePaths(root, import_roots=[]).relative(str(site / "pkg" / "other.py")) is None
    assert paths.relative("<string>") is None
    shutil.rmtree(site)
    assert SourcePaths(root, import_roots=[str(site)]).relative(str(site / "pkg" / "gone.py")) is None
