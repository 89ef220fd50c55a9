"""A Django project written the way real ones are (``tests/fixtures/djshop``), through the real CLI.

Settings read from the environment, lazy translations and a lazy URL in the settings, queues and
routes declared in ``AppConfig.ready()``, ``autodiscover_tasks(lambda: settings.INSTALLED_APPS)``,
task modules that import models, and an ``on_after_finalize`` handler that needs the database
before it adds its periodic tasks. Every command loads it the way ``celery worker`` does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli import run_deploykit

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "djshop"
HANDLER_WARNING = (
    "deploykit: warning: app.on_after_finalize handler catalog.tasks.setup_periodic_tasks raised "
    "OperationalError: unable to open database file (catalog/tasks.py:31): what it sets up after "
    "that point (periodic tasks, queues, routes) is missing"
)
PERIODIC = ["catalog-cleanup-often", "catalog-reindex-all", "catalog-resize-pending"]


@pytest.fixture
def djshop(tmp_path: Path) -> Path:
    project = tmp_path / "djshop"
    shutil.copytree(FIXTURE, project, ignore=shutil.ignore_patterns("__pycache__"))
    return project


def deploykit(
    project: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_deploykit(*args, env=env, cwd=project, timeout=120)


def with_database(project: Path) -> dict[str, str]:
    return {"DJSHOP_DB_PATH": str(project / "db.sqlite3")}


def test_doctor_reads_the_audited_settings_after_django_setup(djshop: Path) -> None:
    result = deploykit(djshop, "doctor", "--offline", "--json", "--fail-on", "never", "-A", "djshop")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    document = json.loads(result.stdout)
    ids = {finding["rule"] for finding in document["findings"]}
    # CELERY_TASK_ACKS_LATE is read through the CELERY namespace (without reject_on_worker_lost).
    assert "ACKS_LATE_WITHOUT_REJECT" in ids
    assert "NO_TIME_LIMIT" not in ids  # CELERY_TASK_TIME_LIMIT = 300 was read too
    assert result.stderr.strip().splitlines() == [HANDLER_WARNING]


def test_snapshot_check_names_the_beat_entries_a_failing_handler_dropped(djshop: Path) -> None:
    written = deploykit(djshop, "manifest", "snapshot", env=with_database(djshop))
    assert written.returncode == 0, written.stderr
    assert written.stderr == ""
    assert "wrote celery-tasks.manifest.json: 3 tasks, 4 beat entries" in written.stdout
    manifest = json.loads((djshop / "celery-tasks.manifest.json").read_text())
    assert sorted(entry["name"] for entry in manifest["beat"]) == ["catalog-cleanup", *PERIODIC]
    caption = manifest["tasks"]["catalog.tasks.resize_images"]["parameters"][2]
    # A lazy translation is not evaluated: its text would depend on the active language.
    assert caption["default"] == "<django.utils.functional.Promise object>"
    assert deploykit(djshop, "manifest", "snapshot", "--check", env=with_database(djshop)).returncode == 0

    # CI has no database: the handler raises before adding its periodic tasks.
    stale = deploykit(djshop, "manifest", "snapshot", "--check")
    assert stale.returncode == 1
    assert stale.stderr.strip().splitlines() == [
        HANDLER_WARNING,
        "deploykit: error: celery-tasks.manifest.json is stale (beat entries removed: "
        + ", ".join(PERIODIC)
        + "): first check the 1 error(s) while loading the app (warned above), then run "
        "`deploykit manifest snapshot` and commit it",
    ]
    as_json = deploykit(djshop, "manifest", "snapshot", "--check", "--json")
    assert as_json.returncode == 1
    document = json.loads(as_json.stdout)
    assert document["beat_removed"] == PERIODIC and document["beat_added"] == []
    assert document["load_warnings"] == [HANDLER_WARNING.removeprefix("deploykit: warning: ")]


def test_check_names_changed_beat_entries(djshop: Path) -> None:
    env = with_database(djshop)
    assert deploykit(djshop, "manifest", "snapshot", env=env).returncode == 0
    settings = djshop / "djshop" / "settings.py"
    settings.write_text(settings.read_text().replace('"schedule": 3600.0', '"schedule": 60.0, "args": (7,)'))
    result = deploykit(djshop, "manifest", "snapshot", "--check", env=env)
    assert result.returncode == 1
    assert "(beat entries changed: catalog-cleanup)" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("manifest", "snapshot"),
        ("doctor", "--offline", "-A", "djshop"),
        ("queues", "-A", "djshop", "-b", "redis://127.0.0.1:1/0"),
        ("check",),
    ],
)
def test_a_broken_settings_module_is_one_line_exit_2(djshop: Path, args: tuple[str, ...]) -> None:
    (djshop / "celery-tasks.manifest.json").write_text('{"schema": 1, "tasks": {}}')
    result = deploykit(djshop, *args, env={"DJANGO_SETTINGS_MODULE": "djshop.no_such_settings"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "deploykit: error: cannot load the app's configuration from the Django settings module "
        "'djshop.no_such_settings' (DJANGO_SETTINGS_MODULE): ModuleNotFoundError: No module named "
        "'djshop.no_such_settings'"
    ]


def test_settings_that_need_an_environment_variable(djshop: Path) -> None:
    settings = djshop / "djshop" / "settings.py"
    settings.write_text(
        settings.read_text().replace(
            'os.environ.get("DJSHOP_SECRET_KEY", "fixture-only")', 'os.environ["DJSHOP_SECRET_KEY"]'
        )
    )
    result = deploykit(djshop, "manifest", "snapshot", "-o", "-")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "deploykit: error: cannot load the app's configuration from the Django settings module "
        "'djshop.settings' (DJANGO_SETTINGS_MODULE): KeyError: 'DJSHOP_SECRET_KEY' (djshop/settings.py:9)"
    ]
    ok = deploykit(djshop, "manifest", "snapshot", "-o", "-", env={"DJSHOP_SECRET_KEY": "x"})
    assert ok.returncode == 0, ok.stderr


def test_a_missing_settings_module_is_one_line_exit_2(djshop: Path) -> None:
    celery_module = djshop / "djshop" / "celery.py"
    celery_module.write_text(
        celery_module.read_text().replace(
            'os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djshop.settings")\n', ""
        )
    )
    result = deploykit(djshop, "manifest", "snapshot", "-o", "-")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "deploykit: error: the app reads its settings from django.conf:settings, but "
        "DJANGO_SETTINGS_MODULE is not set: set it to the project's settings module (as its "
        "manage.py does)"
    ]
    ok = deploykit(
        djshop, "manifest", "snapshot", "-o", "-", env={"DJANGO_SETTINGS_MODULE": "djshop.settings"}
    )
    assert ok.returncode == 0, ok.stderr


@pytest.mark.integration
def test_queues_lists_the_queues_declared_at_django_setup(djshop: Path, redis_url: str) -> None:
    result = deploykit(djshop, "queues", "--json", "-A", "djshop", "-b", redis_url)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)["queues"]}
    # Declared in CatalogConfig.ready(); none exists on the broker yet: the new release's queues.
    assert set(rows) == {"default", "catalog.search", "catalog.images"}
    assert all(row["exists"] is False for row in rows.values()), rows
