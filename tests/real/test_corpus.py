"""deploykit on real open-source Celery applications (see tests/real/corpus.py).

Every expectation comes from the application itself, collected without deploykit by
tests/real/collect_truth.py in the application's own environment.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.real.conftest import DOCUMENTED_EXITS, Deployment, describe
from tests.real.corpus import App, Release

pytestmark = pytest.mark.integration


def _release(deployments: tuple[Deployment, Deployment], which: str) -> Deployment:
    return deployments[0] if which == "old" else deployments[1]


def _document(proc: Any) -> Any:
    """The JSON document on stdout. Text the application itself prints while it loads (pretalx's
    start-up banner) is skipped here so the other checks still run; whether stdout is a clean
    document is test_machine_output_is_only_the_document's question."""
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        start = re.search(r"^[{\[]", proc.stdout, re.MULTILINE)
        assert start, describe(proc)
        return json.loads(proc.stdout[start.start() :])


def _no_crash(proc: Any) -> None:
    assert "Traceback" not in proc.stderr, describe(proc)
    assert proc.returncode in DOCUMENTED_EXITS, describe(proc)


def _canonical_name(line: str) -> tuple[str, str] | None:
    if "==" not in line or line.startswith("-e"):
        return None
    name, _, version = line.partition("==")
    return re.sub(r"[-_.]+", "-", name).lower(), version.strip()


# --- installing deploykit beside the application ------------------------------------------


@pytest.mark.parametrize("which", ["old", "new"])
def test_install_beside_changes_no_pin(app: App, which: str) -> None:
    """`pip install deploykit` into the app's environment resolves and moves none of its pins
    (pip's own dry run, unconstrained, in the environment the app's release installed)."""
    release: Release = app.releases[0 if which == "old" else 1]
    error = release.venv / "beside-error.txt"
    assert not error.exists(), (
        f"pip cannot install deploykit beside {release.key}:\n{error.read_text()[-3000:]}"
    )
    pins = dict(
        filter(None, map(_canonical_name, (release.venv / "app-freeze.txt").read_text().splitlines()))
    )
    report = json.loads((release.venv / "beside-report.json").read_text())
    moved = []
    for item in report["install"]:
        meta = item["metadata"]
        name = re.sub(r"[-_.]+", "-", meta["name"]).lower()
        if name in pins and pins[name] != meta["version"] and name != "deploykit":
            moved.append(f"{name} {pins[name]} -> {meta['version']}")
    assert not moved, f"installing deploykit beside {release.key} would move: {', '.join(moved)}"


# --- manifests against the independent collector -------------------------------------------


def _truth_parameters(entry: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return [(p["name"], p["kind"], p["has_default"]) for p in entry["parameters"]]


def _manifest_parameters(entry: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return [(p["name"], p["kind"], p["has_default"]) for p in entry["parameters"]]


@pytest.mark.parametrize("which", ["old", "new"])
def test_manifest_matches_independent_signatures(
    deployments: tuple[Deployment, Deployment], which: str
) -> None:
    d = _release(deployments, which)
    truth = d.truth("tasks")
    assert isinstance(truth, dict)
    expected = truth["tasks"]
    assert expected, f"{d.release.key}: the collector found no task: the harness is wrong"
    proc = d.deploykit("manifest", "snapshot", "-A", d.app.celery_app, "-o", "-")
    _no_crash(proc)
    assert proc.returncode == 0, describe(proc)
    manifest = _document(proc)
    tasks = manifest["tasks"]
    assert sorted(tasks) == sorted(expected), (
        f"{d.release.key}: missing from the manifest {sorted(set(expected) - set(tasks))}, "
        f"extra {sorted(set(tasks) - set(expected))}"
    )
    wrong = {
        name: (_manifest_parameters(tasks[name]), _truth_parameters(entry))
        for name, entry in expected.items()
        if _manifest_parameters(tasks[name]) != _truth_parameters(entry)
    }
    assert not wrong, f"{d.release.key}: signatures differ (manifest, inspect.signature): {wrong}"
    routes = {
        name: (tasks[name]["queue"], entry["queue"])
        for name, entry in expected.items()
        if tasks[name]["queue"] != entry["queue"]
    }
    assert not routes, f"{d.release.key}: queues differ (manifest, app router): {routes}"
    # The same document through --json (written to a file, reported on stdout).
    out = d.workdir / "manifest.json"
    proc = d.deploykit("manifest", "snapshot", "-A", d.app.celery_app, "-o", str(out), "--json")
    _no_crash(proc)
    assert proc.returncode == 0, describe(proc)
    _document(proc)
    assert json.loads(out.read_text())["tasks"] == tasks


@pytest.mark.parametrize("which", ["old", "new"])
def test_doctor_runs_without_traceback(deployments: tuple[Deployment, Deployment], which: str) -> None:
    d = _release(deployments, which)
    text = d.deploykit("doctor", "-A", d.app.celery_app)
    _no_crash(text)
    assert text.returncode in (0, 1), describe(text)  # a loadable app: findings or none
    assert text.stdout.strip(), describe(text)
    as_json = d.deploykit("doctor", "-A", d.app.celery_app, "--json")
    _no_crash(as_json)
    assert as_json.returncode == text.returncode, describe(as_json)
    document = _document(as_json)
    assert document["schema"].startswith("deploykit.doctor/"), describe(as_json)


@pytest.mark.parametrize("which", ["old", "new"])
def test_queues_lists_the_apps_queues(deployments: tuple[Deployment, Deployment], which: str) -> None:
    d = _release(deployments, which)
    truth = d.truth("tasks")
    assert isinstance(truth, dict)
    declared = set(truth["declared_queues"]) | {e["queue"] for e in truth["tasks"].values() if e.get("queue")}
    proc = d.deploykit("-b", d.broker_url, "queues", "-A", d.app.celery_app, "--json")
    _no_crash(proc)
    assert proc.returncode == 0, describe(proc)
    listed = {q["name"] for q in _document(proc)["queues"]}
    assert declared <= listed, (
        f"{d.release.key}: `queues -A` does not list {sorted(declared - listed)} (listed: {sorted(listed)})"
    )


# --- the release between the two versions --------------------------------------------------

VAR_KINDS = {"VAR_POSITIONAL", "VAR_KEYWORD"}


def _breaking(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str | None, set[str]]]:
    """Breaking changes a plain comparison of the two releases' signatures shows:
    (task, parameter or None, the rules that report it)."""
    expected: list[tuple[str, str | None, set[str]]] = []
    for name, entry in old.items():
        if name not in new:
            expected.append((name, None, {"TASK_REMOVED", "TASK_RENAMED"}))
            continue
        before = {p["name"]: p for p in entry["parameters"]}
        after = {p["name"]: p for p in new[name]["parameters"]}
        absorbs = any(p["kind"] in VAR_KINDS for p in after.values())
        for pname, p in before.items():
            if p["kind"] in VAR_KINDS:
                if not any(q["kind"] == p["kind"] for q in after.values()):
                    rule = "VARARGS_REMOVED" if p["kind"] == "VAR_POSITIONAL" else "VARKW_REMOVED"
                    expected.append((name, pname, {rule}))
                continue
            if pname not in after and not absorbs:
                expected.append((name, pname, {"PARAM_REMOVED", "PARAM_RENAMED"}))
        for pname, p in after.items():
            if p["kind"] in VAR_KINDS or p["has_default"]:
                continue
            if pname not in before:
                expected.append((name, pname, {"PARAM_ADDED_REQUIRED", "PARAM_RENAMED", "PARAM_MOVED"}))
            elif before[pname]["has_default"]:
                expected.append((name, pname, {"PARAM_BECAME_REQUIRED"}))
    return expected


def _missing_findings(
    expected: list[tuple[str, str | None, set[str]]], findings: list[dict[str, Any]]
) -> list[str]:
    missing = []
    for task, parameter, rules in expected:
        if not any(
            (f["task"] == task or (f["rule"] == "TASK_RENAMED" and f"'{task}'" in f["message"]))
            and f["rule"] in rules
            and f["level"] == "error"
            and (parameter is None or f.get("parameter") in (parameter, None) or parameter in f["message"])
            for f in findings
        ):
            missing.append(f"{task} {parameter or ''} ({'/'.join(sorted(rules))})")
    return missing


def test_diff_and_check_report_every_breaking_change(
    deployments: tuple[Deployment, Deployment],
) -> None:
    old, new = deployments
    old_truth = old.truth("tasks")
    new_truth = new.truth("tasks")
    assert isinstance(old_truth, dict) and isinstance(new_truth, dict)
    expected = _breaking(old_truth["tasks"], new_truth["tasks"])
    old_manifest = old.workdir / "old.manifest.json"
    new_manifest = new.workdir / "new.manifest.json"
    for d, path in ((old, old_manifest), (new, new_manifest)):
        proc = d.deploykit("manifest", "snapshot", "-A", d.app.celery_app, "-o", str(path))
        _no_crash(proc)
        assert proc.returncode == 0, describe(proc)

    diff = new.deploykit("manifest", "diff", str(old_manifest), str(new_manifest), "--json")
    _no_crash(diff)
    report = _document(diff)
    missing = _missing_findings(expected, report["findings"])
    assert not missing, f"{new.app.name}: `manifest diff` misses {missing}\n{describe(diff)}"
    assert diff.returncode == (1 if expected else 0), describe(diff)
    assert report["failed"] is bool(expected)

    check = new.deploykit("check", "-A", new.app.celery_app, "-m", str(old_manifest), "--json")
    _no_crash(check)
    checked = _document(check)
    missing = _missing_findings(expected, checked["findings"])
    assert not missing, f"{new.app.name}: `check` misses {missing}\n{describe(check)}"
    assert check.returncode == (1 if expected else 0), describe(check)
    # Both read the same two signatures: the same findings.
    key = lambda f: (f["rule"], f["task"], f.get("parameter"))  # noqa: E731
    assert sorted(map(key, checked["findings"])) == sorted(map(key, report["findings"]))


# --- old messages waiting on the broker, judged against the new release ----------------------

SCAN_VERDICTS = {"runs", "misbound", "fails", "discarded", "undecidable"}


def _calls(old_tasks: dict[str, Any]) -> list[dict[str, Any]]:
    """Two calls per task of the old release, as its producers would send them: every required
    parameter positionally, and every required parameter by keyword."""
    calls = []
    for name, entry in sorted(old_tasks.items()):
        params = entry["parameters"]
        positional = [
            p
            for p in params
            if p["kind"] in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD") and not p["has_default"]
        ]
        keyword_only = {p["name"]: 7 for p in params if p["kind"] == "KEYWORD_ONLY" and not p["has_default"]}
        calls.append({"task": name, "args": list(range(1, len(positional) + 1)), "kwargs": keyword_only})
        if positional and not any(p["kind"] == "POSITIONAL_ONLY" for p in positional):
            kwargs = {p["name"]: i for i, p in enumerate(positional, 1)} | keyword_only
            calls.append({"task": name, "args": [], "kwargs": kwargs})
    return calls


def _expected_verdicts(
    calls: list[dict[str, Any]], before: list[dict[str, Any]], after: list[dict[str, Any]]
) -> Counter[tuple[str, str]]:
    verdicts: Counter[tuple[str, str]] = Counter()
    for call, old, new in zip(calls, before, after, strict=True):
        assert old["verdict"] == "binds", f"an old call does not bind to its own release: {call}"
        if new["verdict"] != "binds":
            verdict = new["verdict"]
        elif new["positional"] != old["positional"]:
            verdict = "misbound"
        else:
            verdict = "runs"
        verdicts[(call["task"], verdict)] += 1
    return verdicts


def test_scan_old_messages_against_the_new_release(
    deployments: tuple[Deployment, Deployment],
) -> None:
    old, new = deployments
    old_truth = old.truth("tasks")
    assert isinstance(old_truth, dict)
    calls = _calls(old_truth["tasks"])
    calls_file = old.workdir / "calls.json"
    calls_file.write_text(json.dumps(calls))
    before = old.truth("bind", str(calls_file))
    after = new.truth("bind", str(calls_file))
    assert isinstance(before, list) and isinstance(after, list)
    expected = _expected_verdicts(calls, before, after)

    old_manifest = old.workdir / "old.manifest.json"
    proc = old.deploykit("manifest", "snapshot", "-A", old.app.celery_app, "-o", str(old_manifest))
    _no_crash(proc)
    assert proc.returncode == 0, describe(proc)
    # The old release's producers publish, through the app's own routing, into the namespace.
    sent = old.truth("publish", str(calls_file))
    assert isinstance(sent, list) and len(sent) == len(calls)

    queues = new.deploykit("-b", new.broker_url, "queues", "-A", new.app.celery_app, "--json")
    _no_crash(queues)
    waiting = sum(q["ready"] or 0 for q in _document(queues)["queues"])
    assert waiting == len(calls), f"{len(calls)} published, `queues` counts {waiting}\n{describe(queues)}"

    args = [
        "-b",
        new.broker_url,
        "scan",
        "-A",
        new.app.celery_app,
        "--manifest",
        str(old_manifest),
        "--no-workers",
        "--no-beat",
        "--json",
    ]
    if new.app.broker == "amqp":
        args += ["--peek", "--peek-limit", str(len(calls) + 10)]
    scan = new.deploykit(*args)
    _no_crash(scan)
    report = _document(scan)
    seen: Counter[tuple[str, str]] = Counter()
    for group in report["groups"]:
        assert group["verdict"] in SCAN_VERDICTS
        seen[(group["task"], group["verdict"])] += group["count"]
    differences = {
        key: (seen.get(key, 0), expected.get(key, 0))
        for key in set(seen) | set(expected)
        if seen.get(key, 0) != expected.get(key, 0)
    }
    assert not differences, (
        f"{new.app.name}: scan verdicts differ from inspect.signature().bind "
        f"((task, verdict): (scan, bind)): {dict(sorted(differences.items()))}"
    )
    breaking = any(v in ("fails", "discarded", "misbound") for _, v in expected)
    assert scan.returncode == (1 if breaking else 0), describe(scan)


def test_collector_is_independent() -> None:
    """The ground truth must not come from the code under test."""
    tree = ast.parse(Path(inspect.getfile(_calls)).with_name("collect_truth.py").read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "importlib", "inspect", "json", "sys", "typing"}, imported


@pytest.mark.parametrize("which", ["old", "new"])
def test_machine_output_is_only_the_document(deployments: tuple[Deployment, Deployment], which: str) -> None:
    """`-o -` and `--json` print one JSON document on stdout (README, JSON output), even when
    the application prints while it loads: a deploy script pipes it into jq or a file."""
    d = _release(deployments, which)
    for args in (
        ("manifest", "snapshot", "-A", d.app.celery_app, "-o", "-"),
        ("doctor", "-A", d.app.celery_app, "--json"),
        ("-b", d.broker_url, "queues", "-A", d.app.celery_app, "--json"),
    ):
        proc = d.deploykit(*args)
        _no_crash(proc)
        try:
            json.loads(proc.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"stdout is not one JSON document:\n{describe(proc)[:1500]}")
