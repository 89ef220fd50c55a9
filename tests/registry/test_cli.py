"""``manifest publish`` / ``list`` / ``show`` on a directory registry, in process; and the one-call
``publish_running_manifest`` a worker hook uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deploykit.cli import app
from deploykit.manifest import model
from deploykit.registry import publish_running_manifest
from tests.output.shapes import validate


def _runner() -> CliRunner:
    """A runner that keeps stderr apart (click 8.1 needs ``mix_stderr=False``; 8.2 dropped it)."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = _runner().invoke(app, list(args), env={"DEPLOYKIT_BUILD": "", **(env or {})})
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def manifest_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.json"
    path.write_text(model.dumps(model.Manifest(tasks={"a.t": model.Task(name="a.t")})))
    return path


def test_publish_list_show_round_trip_with_json_documents(tmp_path: Path, manifest_file: Path) -> None:
    reg = str(tmp_path / "reg")
    code, out, err = run(
        "manifest",
        "publish",
        "--from",
        str(manifest_file),
        "--registry",
        reg,
        "--json",
        env={"DEPLOYKIT_BUILD": "b1"},
    )
    assert code == 0, err
    published = json.loads(out)
    validate(published)
    assert published["entry"]["build"] == "b1" and published["entry"]["tasks"] == 1
    code, out, _ = run("manifest", "list", "--registry", reg, "--json")
    assert code == 0
    listed = json.loads(out)
    validate(listed)
    assert [b["build"] for b in listed["builds"]] == ["b1"]
    code, out, _ = run("manifest", "show", "b1", "--registry", reg)
    assert code == 0 and model.loads(out) == model.read(manifest_file)
    code, out, _ = run("manifest", "list", env={"DEPLOYKIT_REGISTRY": reg})
    assert code == 0 and out.splitlines()[1].startswith("b1 ")


def test_the_registry_full_is_said_in_the_output(tmp_path: Path, manifest_file: Path) -> None:
    reg = str(tmp_path / "reg")
    for build in ("b1", "b2", "b3"):
        code, out, err = run(
            "manifest",
            "publish",
            "--build",
            build,
            "--from",
            str(manifest_file),
            "--registry",
            reg,
            "--limit",
            "2",
        )
        assert code == 0, err
    assert "registry full (limit 2 builds): dropped 1 oldest: b1" in out
    code, out, _ = run("manifest", "show", "b1", "--registry", reg)
    assert code == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("manifest", "publish", "--from", "X"), "no build id: pass --build ID or set DEPLOYKIT_BUILD"),
        (
            ("manifest", "publish", "--build", "v1", "--from", "X", "-A", "proj"),
            "--from and -A/--app are exclusive",
        ),
        (("manifest", "publish", "--build", "a" * 129, "--from", "X"), "129 characters, at most 128"),
        (("manifest", "publish", "--build", "../etc", "--from", "X"), "no '/'"),
        (("manifest", "publish", "--build", "v1", "--from", "missing.json"), "missing.json"),
        (("manifest", "show", "v\x1b[2J"), "control or non-printable"),
    ],
)
def test_errors_are_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    code, out, err = run(*args, "--registry", str(tmp_path / "reg"))
    assert out == ""
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1 and "\x1b" not in err
    assert not (tmp_path / "reg").exists()


def test_publish_running_manifest_is_one_call_for_a_worker_hook(tmp_path: Path) -> None:
    from deploykit.brokers.manifest_store import DirectoryManifestStore
    from deploykit.registry import ManifestRegistry
    from tests.apps import basic

    result = publish_running_manifest(basic.app, "w1", registry_dir=str(tmp_path))
    assert result.entry.build == "w1" and result.entry.tasks == 3
    got = ManifestRegistry(DirectoryManifestStore(tmp_path)).get("w1")
    assert got is not None and "tests.apps.basic.send_email" in got.tasks
    with pytest.raises(Exception, match="invalid build id"):
        publish_running_manifest(basic.app, "bad\nid", registry_dir=str(tmp_path))
