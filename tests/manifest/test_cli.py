"""Real projects through the real CLI (a subprocess per command: each import of user code is fresh).

``tests/fixtures/plain/release1`` -> ``release2`` is a release with realistic breaking changes;
``tests/fixtures/djproj`` is a small Django project.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli import run_deploykit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

RELEASE2_FINDINGS = {
    ("BEAT_ARGS_UNBOUND", "shop.tasks.sync"),
    ("BEAT_TASK_MISSING", "shop.tasks.old_report"),
    ("PARAM_ADDED_OPTIONAL", "shop.tasks.send_email"),
    ("PARAM_BECAME_REQUIRED", "shop.tasks.charge"),
    ("PARAM_BECAME_REQUIRED", "shop.tasks.sync"),
    ("PARAM_KIND_CHANGED", "shop.tasks.sync"),
    ("PARAM_MOVED", "shop.tasks.charge"),
    ("PARAM_RENAMED", "shop.tasks.resize"),
    ("ROUTE_CHANGED", "shop.tasks.resize"),
    ("TASK_ADDED", "shop.tasks.refund"),
    ("TASK_REMOVED", "shop.tasks.old_report"),
    ("TASK_RENAMED", "shop.maintenance.cleanup"),
}


def deploykit(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_deploykit(*args, env=env, cwd=cwd, timeout=120)


@pytest.fixture
def shop(tmp_path: Path) -> tuple[Path, Path]:
    """Release 1 and release 2 of the plain project, with release 1's manifest committed in both."""
    r1, r2 = tmp_path / "release1", tmp_path / "release2"
    shutil.copytree(FIXTURES / "plain" / "release1", r1)
    shutil.copytree(FIXTURES / "plain" / "release2", r2)
    result = deploykit(r1, "manifest", "snapshot")
    assert result.returncode == 0, result.stderr
    shutil.copy(r1 / "deploykit.manifest.json", r2 / "deploykit.manifest.json")
    return r1, r2


def test_snapshot_is_deterministic(shop: tuple[Path, Path]) -> None:
    r1, _ = shop
    first = (r1 / "deploykit.manifest.json").read_bytes()
    result = deploykit(r1, "manifest", "snapshot")
    assert result.returncode == 0
    assert "unchanged deploykit.manifest.json: 6 tasks, 2 beat entries" in result.stdout
    assert (r1 / "deploykit.manifest.json").read_bytes() == first
    document = json.loads(first)
    assert document["schema"] == 1
    assert set(document["generator"]) == {"celery", "kombu"}
    charge = document["tasks"]["shop.tasks.charge"]
    assert charge["bound"] is True and [p["name"] for p in charge["parameters"]] == [
        "order_id",
        "amount",
        "currency",
    ]
    assert charge["file"] == "shop/tasks.py" and charge["line"] == 11
    assert document["tasks"]["shop.tasks.resize"]["queue"] == "media"
    assert [e["name"] for e in document["beat"]] == ["hourly-sync", "nightly-report"]
    stdout = deploykit(r1, "manifest", "snapshot", "-o", "-")
    assert stdout.stdout.encode() == first


def test_snapshot_check_fresh_and_stale(shop: tuple[Path, Path]) -> None:
    r1, r2 = shop
    fresh = deploykit(r1, "manifest", "snapshot", "--check")
    assert fresh.returncode == 0, fresh.stderr
    assert "is up to date" in fresh.stdout
    stale = deploykit(r2, "manifest", "snapshot", "--check")
    assert stale.returncode == 1
    assert "deploykit.manifest.json is stale" in stale.stderr
    assert "removed: shop.tasks.cleanup, shop.tasks.old_report" in stale.stderr
    as_json = deploykit(r2, "manifest", "snapshot", "--check", "--json")
    assert as_json.returncode == 1
    document = json.loads(as_json.stdout)
    assert document["schema"] == "deploykit.snapshot/1" and document["stale"] is True
    assert document["added"] == ["shop.maintenance.cleanup", "shop.tasks.refund"]
    missing = deploykit(r2, "manifest", "snapshot", "--check", "-o", "nothing-here.json")
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_check_catches_release2(shop: tuple[Path, Path]) -> None:
    _, r2 = shop
    result = deploykit(r2, "check", "--json")
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert document["schema"] == "deploykit.findings/1"
    assert document["failed"] is True and document["fail_on"] == "error"
    found = {(f["rule"], f["task"]) for f in document["findings"]}
    assert found == RELEASE2_FINDINGS
    suppressed = [f for f in document["findings"] if f["suppressed"]]
    assert [(f["rule"], f["suppressed_by"]) for f in suppressed] == [("PARAM_ADDED_OPTIONAL", "inline")]
    assert document["counts"] == {"error": 10, "warning": 1, "info": 1, "suppressed": 1}
    moved = next(f for f in document["findings"] if f["rule"] == "PARAM_MOVED")
    assert moved["file"] == "shop/tasks.py" and moved["line"] == 20 and moved["hint"]

    text = deploykit(r2, "check")
    assert text.returncode == 1
    assert "shop.tasks.charge  shop/tasks.py:20" in text.stdout
    assert "PARAM_ADDED_OPTIONAL (suppressed: inline)" in text.stdout
    assert "10 errors, 1 warning, 1 info, 1 suppressed; 6 -> 6 tasks. FAILED (--fail-on error)" in text.stdout

    assert deploykit(r2, "check", "--fail-on", "never").returncode == 0


def test_diff_of_two_files_and_fail_on(shop: tuple[Path, Path]) -> None:
    r1, r2 = shop
    assert deploykit(r2, "manifest", "snapshot", "-o", "new.json").returncode == 0
    result = deploykit(r2, "manifest", "diff", "deploykit.manifest.json", "new.json", "--json")
    assert result.returncode == 1
    assert {(f["rule"], f["task"]) for f in json.loads(result.stdout)["findings"]} == RELEASE2_FINDINGS
    same = deploykit(r1, "manifest", "diff", "deploykit.manifest.json", "deploykit.manifest.json")
    assert same.returncode == 0 and "No changes" in same.stdout
    # Only the warning remains once the errors are suppressed in pyproject: --fail-on decides.
    (r2 / "pyproject.toml").write_text(
        '[tool.deploykit]\napp = "shop"\nignore = ["shop.*:*", "ROUTE_CHANGED"]\n'
        'fail_on = "warning"\n'.replace(
            '"shop.*:*", ', '"shop.tasks.*:PARAM_MOVED", "shop.tasks.*:TASK_REMOVED", '
        )
    )
    partly = deploykit(r2, "manifest", "diff", "deploykit.manifest.json", "new.json", "--json")
    document = json.loads(partly.stdout)
    by = {(f["rule"], f["task"]): f["suppressed_by"] for f in document["findings"] if f["suppressed"]}
    assert by[("ROUTE_CHANGED", "shop.tasks.resize")] == "pyproject: ROUTE_CHANGED"
    assert by[("PARAM_MOVED", "shop.tasks.charge")] == "pyproject: shop.tasks.*:PARAM_MOVED"
    assert document["fail_on"] == "warning" and partly.returncode == 1
    (r2 / "pyproject.toml").write_text('[tool.deploykit]\nignore = ["*:*"]\nfail_on = "info"\n')
    quiet = deploykit(r2, "manifest", "diff", "deploykit.manifest.json", "new.json")
    assert quiet.returncode == 0, quiet.stdout
    (r2 / "pyproject.toml").write_text('[tool.deploykit]\nignore = ["NOT_A_RULE"]\n')
    typo = deploykit(r2, "manifest", "diff", "deploykit.manifest.json", "new.json")
    assert typo.returncode == 2 and "unknown rule 'NOT_A_RULE'" in typo.stderr


def test_ci_formats(shop: tuple[Path, Path], tmp_path: Path) -> None:
    _, r2 = shop
    summary = tmp_path / "summary.md"
    github = deploykit(r2, "check", env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    assert github.returncode == 1
    lines = github.stdout.splitlines()
    assert lines[0].startswith("::error file=shop/maintenance.py,line=4,title=TASK_RENAMED")
    assert any(line.startswith("::warning file=shop/tasks.py,line=25,title=ROUTE_CHANGED") for line in lines)
    assert any(line.startswith("::notice ") for line in lines)
    assert not any("PARAM_ADDED_OPTIONAL" in line for line in lines if line.startswith("::"))
    table = summary.read_text()
    assert "| level | rule | task |" in table and table.count("\n| ") == 1 + 13  # header + every finding

    report = tmp_path / "gl.json"
    gitlab = deploykit(r2, "check", "--format", "gitlab", "--report", f"json={tmp_path / 'r.json'}")
    assert gitlab.returncode == 1
    issues = json.loads(gitlab.stdout)
    assert len(issues) == 12
    for issue in issues:
        assert set(issue) == {"description", "check_name", "fingerprint", "severity", "location"}
        assert issue["severity"] in {"info", "minor", "major", "critical", "blocker"}
        assert issue["location"]["path"] and issue["location"]["lines"]["begin"] >= 1
    assert len({i["fingerprint"] for i in issues}) == 12
    assert json.loads((tmp_path / "r.json").read_text())["counts"]["error"] == 10
    deploykit(r2, "check", "--format", "markdown", "--report", f"gitlab={report}")
    assert len(json.loads(report.read_text())) == 12
    markdown = deploykit(r2, "check", "--format", "markdown", "--fail-on", "never")
    page = "https://deploykit.readthedocs.io/en/stable/rules/param-moved/"
    assert markdown.returncode == 0 and f"| error | [`PARAM_MOVED`]({page}) |" in markdown.stdout


def test_usage_errors_exit_2(shop: tuple[Path, Path], tmp_path: Path) -> None:
    _, r2 = shop
    (r2 / "corrupt.json").write_text('{"schema": 1, "tasks": [')
    (r2 / "future.json").write_text('{"schema": 99, "tasks": {}}')
    (r2 / "wrong.json").write_text('{"schema": 1, "tasks": {"a": {"name": "a", "parameters": "x"}}}')
    cases = [
        (("check", "--manifest", "corrupt.json"), "corrupt.json is not valid JSON"),
        (
            ("check", "--manifest", "future.json"),
            "schema version 99 is newer than this deploykit understands",
        ),
        (("check", "--manifest", "missing.json"), "no manifest at missing.json"),
        (
            ("manifest", "diff", "wrong.json", "deploykit.manifest.json"),
            "wrong.json is not a valid deploykit manifest",
        ),
        (("manifest", "diff", "deploykit.manifest.json", "future.json"), "upgrade deploykit"),
        (("check", "--fail-on", "sometimes"), "invalid --fail-on"),
        (("check", "--format", "xml"), "invalid --format"),
        (("check", "--report", "xml"), "invalid --report"),
        (("check", "-A", "no_such_module_xyz"), "cannot import app module 'no_such_module_xyz'"),
    ]
    for args, message in cases:
        result = deploykit(r2, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_app_that_fails_to_import_exits_2_with_its_message(tmp_path: Path) -> None:
    project = tmp_path / "broken"
    shutil.copytree(FIXTURES / "broken", project)
    for args in (("manifest", "snapshot"), ("check", "--manifest", "x.json")):
        if args[0] == "check":
            (project / "x.json").write_text('{"schema": 1, "tasks": {}}')
        result = deploykit(project, *args)
        assert result.returncode == 2
        assert "RuntimeError: database settings missing: SHOP_DB_URL" in result.stderr
        assert "brokenapp/tasks.py:1" in result.stderr
        assert "Traceback" not in result.stderr


def test_django_project(tmp_path: Path) -> None:
    project = tmp_path / "djproj"
    shutil.copytree(FIXTURES / "djproj", project)
    result = deploykit(project, "manifest", "snapshot")
    assert result.returncode == 0, result.stderr
    assert "wrote celery-tasks.manifest.json: 4 tasks, 1 beat entries" in result.stdout
    document = json.loads((project / "celery-tasks.manifest.json").read_text())
    tasks = document["tasks"]
    assert set(tasks) == {
        "mail.tasks.send_receipt",
        "orders.archive",
        "orders.tasks.place",
        "orders.tasks.retry_payment",
    }
    archive = tasks["orders.archive"]
    assert archive["qualname"] == "ArchiveOrders" and archive["bound"] is True
    assert archive["options"]["acks_late"] is True
    assert [(p["name"], p["kind"]) for p in archive["parameters"]] == [
        ("before_days", "POSITIONAL_OR_KEYWORD"),
        ("dry_run", "KEYWORD_ONLY"),
    ]
    retry = tasks["orders.tasks.retry_payment"]
    assert retry["bound"] is True and retry["options"]["max_retries"] == 5
    assert retry["parameters"][0] == {
        "name": "order_id",
        "kind": "POSITIONAL_ONLY",
        "has_default": False,
        "default": None,
        "annotation": None,
    }
    assert tasks["mail.tasks.send_receipt"]["queue"] == "mail"
    assert document["beat"][0]["kwargs"] == {"before_days": "90"}

    fresh = deploykit(project, "check")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert "No changes that affect queued or in-flight tasks." in fresh.stdout
    assert deploykit(project, "manifest", "snapshot", "--check").returncode == 0

    # Release 2: a changed default (suppressed in pyproject) and a breaking change in a bound task.
    mail = project / "mail" / "tasks.py"
    mail.write_text(mail.read_text().replace('template="receipt.html"', 'template="receipt-v2.html"'))
    orders = project / "orders" / "tasks.py"
    orders.write_text(
        orders.read_text().replace("def run(self, before_days=30, *,", "def run(self, *, before_days=30,")
    )
    changed = deploykit(project, "check", "--json")
    assert changed.returncode == 1
    findings = {(f["rule"], f["task"], f["suppressed"]) for f in json.loads(changed.stdout)["findings"]}
    assert findings == {
        ("PARAM_DEFAULT_CHANGED", "mail.tasks.send_receipt", True),
        ("PARAM_KIND_CHANGED", "orders.archive", False),
    }
    assert deploykit(project, "manifest", "snapshot", "--check").returncode == 1


def test_snapshot_bytes_do_not_depend_on_hash_seed(tmp_path: Path) -> None:
    """Set defaults and beat args print in hash order; the manifest must not."""
    (tmp_path / "seeded.py").write_text(
        "from celery import Celery\n"
        "app = Celery('seeded', broker='memory://', set_as_current=False)\n"
        "app.conf.beat_schedule = {\n"
        "    'e': {'task': 'seeded.t', 'schedule': 1.0, 'args': ({'x', 'y', 'z', 'w'},)},\n"
        "}\n"
        "@app.task\n"
        "def t(tags=frozenset({'alpha', 'beta', 'gamma', 'delta'}), opts={'k': {'m', 'n', 'o'}}):\n"
        "    pass\n"
    )
    outputs = set()
    for seed in ("1", "2", "3"):
        result = deploykit(
            tmp_path, "-A", "seeded", "manifest", "snapshot", "-o", "-", env={"PYTHONHASHSEED": seed}
        )
        assert result.returncode == 0, result.stderr
        outputs.add(result.stdout)
    assert len(outputs) == 1
    assert "frozenset({'alpha', 'beta', 'delta', 'gamma'})" in outputs.pop()


def test_rules_listing(tmp_path: Path) -> None:
    from deploykit.manifest.rules import RULES

    result = deploykit(tmp_path, "manifest", "rules", "--json")
    assert result.returncode == 0
    listed = json.loads(result.stdout)["rules"]
    assert [r["id"] for r in listed] == list(RULES)
    assert {r["level"] for r in listed} == {"error", "warning", "info"}
    assert listed[0]["docs"] == "https://deploykit.readthedocs.io/en/stable/rules/task-removed/"
    mirrored = deploykit(
        tmp_path, "manifest", "rules", env={"DEPLOYKIT_DOCS_URL": "https://docs.example.com/dk"}
    )
    assert mirrored.returncode == 0
    assert mirrored.stdout.splitlines()[1].strip() == "https://docs.example.com/dk/task-removed/"
    bad = deploykit(tmp_path, "manifest", "rules", env={"DEPLOYKIT_DOCS_URL": "not a url"})
    assert bad.returncode == 2 and "DEPLOYKIT_DOCS_URL must be an absolute URL" in bad.stderr
