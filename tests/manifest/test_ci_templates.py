"""Each CI template parses, has the keys its platform requires, and its commands work on a sample project.

The commands are run the way each platform runs them (GitHub: ``bash --noprofile --norc -eo
pipefail``; GitLab: the script lines in one shell; pre-commit: the entry plus args) with the
inputs substituted, against ``tests/fixtures/plain`` (release 1's manifest committed, release 1
or release 2 code).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "ci-templates"
FIXTURES = ROOT / "tests" / "fixtures" / "plain"
BIN = str(Path(sys.executable).parent)


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DEPLOYKIT_", "GITHUB_", "CI_", "RUNNER_")) and k != "DJANGO_SETTINGS_MODULE"
    }
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


@pytest.fixture(params=["release1", "release2"])
def project(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, bool]:
    """(project root, whether it has breaking changes) with release 1's manifest committed."""
    r1 = tmp_path / "release1"
    shutil.copytree(FIXTURES / "release1", r1)
    subprocess.run(
        [sys.executable, "-m", "deploykit", "manifest", "snapshot"],
        cwd=r1,
        env=_env({}),
        check=True,
        capture_output=True,
    )
    if request.param == "release1":
        return r1, False
    r2 = tmp_path / "release2"
    shutil.copytree(FIXTURES / "release2", r2)
    shutil.copy(r1 / "deploykit.manifest.json", r2 / "deploykit.manifest.json")
    return r2, True


def _github_expr(text: str, inputs: dict[str, str]) -> str:
    return re.sub(r"\$\{\{\s*inputs\.([\w-]+)\s*\}\}", lambda m: inputs[m.group(1)], text)


# --- GitHub ----------------------------------------------------------------------------------


def test_github_action_structure() -> None:
    action = yaml.safe_load((TEMPLATES / "github" / "action.yml").read_text())
    assert action["name"] and action["description"]
    assert action["runs"]["using"] == "composite"
    for name, spec in action["inputs"].items():
        assert spec["description"] and "default" in spec, name
    assert {"app", "manifest", "fail-on"} <= set(action["inputs"])
    for name, spec in action["outputs"].items():
        assert spec["description"] and re.fullmatch(
            r"\$\{\{ steps\.check\.outputs\.[\w-]+ \}\}", spec["value"]
        ), name
    assert {"errors", "warnings", "failed"} <= set(action["outputs"])
    for step in action["runs"]["steps"]:
        if "run" in step:
            assert step["shell"] == "bash", step
            # Inputs reach scripts through env, never interpolated into the script (injection).
            assert "${{" not in step["run"], step["name"]


def test_github_action_runs(project: tuple[Path, bool], tmp_path: Path) -> None:
    root, breaking = project
    action = yaml.safe_load((TEMPLATES / "github" / "action.yml").read_text())
    inputs = {name: str(spec["default"]) for name, spec in action["inputs"].items()}
    inputs.update({"app": "shop", "install": "", "working-directory": str(root)})
    output, summary = tmp_path / "output", tmp_path / "summary.md"
    output.touch()
    ran = []
    for step in action["runs"]["steps"]:
        condition = step.get("if")
        if condition is not None:
            match = re.fullmatch(r"inputs\.([\w-]+) != ''", condition)
            assert match, condition
            if inputs[match.group(1)] == "":
                continue
        env = {k: _github_expr(str(v), inputs) for k, v in step.get("env", {}).items()}
        env.update(
            {
                "GITHUB_ACTIONS": "true",
                "GITHUB_OUTPUT": str(output),
                "GITHUB_STEP_SUMMARY": str(summary),
                "GITHUB_WORKSPACE": str(root),
                "RUNNER_TEMP": str(tmp_path),
            }
        )
        script = tmp_path / "step.sh"
        script.write_text(step["run"])
        cwd = _github_expr(step.get("working-directory", "."), inputs)
        result = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=cwd,
            env=_env(env),
            capture_output=True,
            text=True,
            timeout=120,
        )
        ran.append((step["name"], result))
    result = next(r for n, r in ran if n == "deploykit check")
    assert result.returncode == (1 if breaking else 0), result.stderr
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    assert set(outputs) == {"errors", "warnings", "infos", "suppressed", "failed", "report-path"}
    if breaking:
        assert outputs["errors"] == "10" and outputs["failed"] == "true"
        assert "::error file=shop/tasks.py,line=20," in result.stdout
        assert "| level | rule | task |" in summary.read_text()
    else:
        assert outputs["errors"] == "0" and outputs["failed"] == "false"
    assert json.loads(Path(outputs["report-path"]).read_text())["schema"] == "deploykit.findings/1"


def test_github_workflow_example(project: tuple[Path, bool]) -> None:
    root, breaking = project
    workflow = yaml.safe_load((TEMPLATES / "github" / "workflow-example.yml").read_text())
    assert "pull_request" in workflow[True]  # YAML 1.1 reads the key `on` as True
    job = workflow["jobs"]["task-signatures"]
    assert job["runs-on"]
    uses = [s["uses"] for s in job["steps"] if "uses" in s]
    assert "deploykit/deploykit/ci-templates/github@v1" in uses
    commands = [
        line.strip()
        for step in job["steps"]
        if "run" in step
        for line in step["run"].splitlines()
        if line.strip().startswith("deploykit ")
    ]
    assert commands
    for step in job["steps"]:
        if "run" in step:
            assert step.get("shell") == "bash"
    for command in commands:
        args = ["shop" if a == "proj" else a for a in shlex.split(command)[1:]]
        result = subprocess.run(
            [sys.executable, "-m", "deploykit", *args], cwd=root, env=_env({}), capture_output=True, text=True
        )
        assert result.returncode == (1 if breaking else 0), (command, result.stderr)


# --- GitLab ----------------------------------------------------------------------------------


def _gitlab_inputs(text: str, inputs: dict[str, Any]) -> str:
    return re.sub(r"\$\[\[\s*inputs\.([\w-]+)\s*\]\]", lambda m: str(inputs[m.group(1)]), text)


def test_gitlab_component(project: tuple[Path, bool]) -> None:
    root, breaking = project
    raw = (TEMPLATES / "gitlab" / "deploykit.yml").read_text()
    spec, _ = list(yaml.safe_load_all(raw))
    declared = spec["spec"]["inputs"]
    assert {"app", "manifest", "fail-on", "stage"} <= set(declared)
    inputs = {name: value.get("default", "") for name, value in declared.items()}
    inputs.update({"app": "shop", "install": ""})
    _, jobs = list(yaml.safe_load_all(_gitlab_inputs(raw, inputs)))
    job = jobs["deploykit-check"]
    assert job["stage"] == "test" and job["image"]
    assert job["artifacts"]["when"] == "always"
    report = job["artifacts"]["reports"]["codequality"]
    assert report == "gl-code-quality-report.json"
    variables = {k: str(v) for k, v in job["variables"].items()}
    result = subprocess.run(
        ["bash", "-e", "-c", "\n".join(job["script"])],
        cwd=root,
        env=_env({**variables, "CI_PROJECT_DIR": str(root)}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == (1 if breaking else 0), result.stderr
    issues = json.loads((root / report).read_text())
    assert len(issues) == (12 if breaking else 0)
    for issue in issues:
        assert {"description", "check_name", "fingerprint", "severity", "location"} <= set(issue)
        assert (root / issue["location"]["path"]).exists()
    assert (root / "deploykit-check.json").exists()


# --- pre-commit ------------------------------------------------------------------------------


def test_pre_commit_hooks(project: tuple[Path, bool]) -> None:
    root, breaking = project
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hooks and {h["id"] for h in hooks} >= {"deploykit-manifest"}
    for hook in hooks:
        assert {"id", "name", "entry", "language"} <= set(hook)
        assert hook["language"] in {"system", "python"}
        assert hook["pass_filenames"] is False
        re.compile(hook["files"])
        assert re.search(hook["files"], "deploykit.manifest.json")
        assert re.search(hook["files"], "shop/tasks.py")
        entry = shlex.split(hook["entry"])
        assert entry[0] == "deploykit"
        result = subprocess.run(
            [sys.executable, "-m", "deploykit", *entry[1:]],
            cwd=root,
            env=_env({}),
            capture_output=True,
            text=True,
        )
        assert result.returncode == (1 if breaking else 0), result.stderr
    example = yaml.safe_load((TEMPLATES / "pre-commit" / "example-pre-commit-config.yaml").read_text())
    ids = {h["id"] for h in hooks}
    for repo in example["repos"]:
        assert repo["repo"] and repo["rev"]
        for used in repo["hooks"]:
            assert used["id"] in ids
            hook = next(h for h in hooks if h["id"] == used["id"])
            args = ["shop" if a == "proj" else a for a in used.get("args", [])]
            result = subprocess.run(
                [sys.executable, "-m", "deploykit", *shlex.split(hook["entry"])[1:], *args],
                cwd=root,
                env=_env({}),
                capture_output=True,
                text=True,
            )
            assert result.returncode == (1 if breaking else 0), result.stderr
