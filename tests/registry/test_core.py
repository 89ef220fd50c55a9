"""The manifest registry's core (:mod:`deploykit.registry`) over an in-memory store and a fake clock,
and the directory store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deploykit.brokers.manifest_store import DirectoryManifestStore, MemoryManifestStore
from deploykit.errors import UsageError
from deploykit.manifest.model import Manifest, Parameter, Task
from deploykit.registry import (
    ENTRY_FORMAT,
    MAX_BUILD_LENGTH,
    ManifestRegistry,
    encode_entry,
    validate_build,
)


def manifest(*names: str) -> Manifest:
    return Manifest(
        tasks={n: Task(name=n, parameters=(Parameter("x", "POSITIONAL_OR_KEYWORD"),)) for n in names}
    )


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def registry(limit: int = 50, store: MemoryManifestStore | None = None) -> ManifestRegistry:
    return ManifestRegistry(store or MemoryManifestStore(), limit=limit, now=Clock())


def test_publish_then_get_gives_the_same_manifest_back() -> None:
    reg = registry()
    m = manifest("a.t", "b.t")
    result = reg.publish("v1", m)
    assert not result.replaced and result.dropped == ()
    assert result.entry.tasks == 2 and result.entry.size > 0
    assert reg.get("v1") == m
    assert reg.get("v2") is None


def test_republishing_replaces_and_refreshes_the_time() -> None:
    reg = registry()
    reg.publish("v1", manifest("a"))
    reg.publish("v2", manifest("b"))
    again = reg.publish("v1", manifest("a", "c"))
    assert again.replaced
    assert [e.build for e in reg.entries()] == ["v1", "v2"]  # newest first
    got = reg.get("v1")
    assert got is not None and set(got.tasks) == {"a", "c"}


def test_the_limit_drops_the_oldest_builds_first() -> None:
    reg = registry(limit=3)
    for n in range(1, 4):
        assert reg.publish(f"v{n}", manifest("a")).dropped == ()
    result = reg.publish("v4", manifest("a"))
    assert result.dropped == ("v1",)
    assert [e.build for e in reg.entries()] == ["v4", "v3", "v2"]
    reg2 = registry(limit=1, store=reg.store)  # type: ignore[arg-type]
    assert reg2.publish("v5", manifest("a")).dropped == ("v2", "v3", "v4")
    assert [e.build for e in reg2.entries()] == ["v5"]


def test_protected_builds_are_never_dropped() -> None:
    reg = registry(limit=2)
    for n in range(1, 4):
        reg.publish(f"v{n}", manifest("a"), protect={"v1"})
    assert {e.build for e in reg.entries()} == {"v1", "v3"}
    result = reg.publish("v4", manifest("a"), protect={"v1", "v3"})
    assert result.dropped == ()
    assert result.kept_protected == ("v1",)
    assert [e.build for e in reg.entries()] == ["v4", "v3", "v1"]
    # Once unprotected, the oldest go.
    assert reg.publish("v5", manifest("a")).dropped == ("v1", "v3")


def test_the_published_build_is_kept_even_at_limit_one_with_protection() -> None:
    reg = registry(limit=1)
    reg.publish("old", manifest("a"))
    result = reg.publish("new", manifest("a"), protect={"old"})
    assert result.dropped == () and result.kept_protected == ("old",)
    assert {e.build for e in reg.entries()} == {"old", "new"}


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(UsageError, match="at least 1"):
        ManifestRegistry(MemoryManifestStore(), limit=0)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{not json", "corrupt \\(not JSON\\)"),
        (b"\xff\xfe", "corrupt \\(not JSON\\)"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"build": "v1"}', "no 'registry' format"),
        (json.dumps({"registry": ENTRY_FORMAT + 1, "build": "v1"}).encode(), "newer than this deploykit"),
        (json.dumps({"registry": 1, "build": "v2", "published_at": 1}).encode(), "names another build"),
        (json.dumps({"registry": 1, "build": "v1"}).encode(), "no publish time"),
        (
            json.dumps(
                {"registry": 1, "build": "v1", "published_at": 1, "tasks": 0, "manifest": {"schema": 99}}
            ).encode(),
            "schema",
        ),
        (
            json.dumps(
                {"registry": 1, "build": "v1", "published_at": 1, "tasks": 0, "manifest": "x"}
            ).encode(),
            "registry entry of build 'v1'",
        ),
    ],
)
def test_a_corrupt_or_future_entry_is_a_usage_error_on_get_and_a_problem_in_the_list(
    data: bytes, problem: str
) -> None:
    store = MemoryManifestStore()
    store.write("v1", data, 5.0)
    reg = registry(store=store)
    with pytest.raises(UsageError, match=problem) as caught:
        reg.get("v1")
    assert "v1" in caught.value.message and "\n" not in caught.value.message
    [entry] = reg.entries()
    if b'"manifest"' not in data:  # the list reads the envelope only
        assert entry.problem is not None and entry.tasks is None
        assert entry.published_at == 5.0  # the store's time when the entry has none


def test_an_entry_stored_under_an_odd_name_is_listed_with_its_problem() -> None:
    store = MemoryManifestStore()
    store.write("bad\x07name", encode_entry("bad\x07name", manifest("a"), 3.0), 3.0)
    [entry] = registry(store=store).entries()
    assert entry.problem is not None and "control" in entry.problem


@pytest.mark.parametrize(
    "build",
    [
        "",
        "   ",
        "a/b",
        "a\\b",
        ".",
        "..",
        "x" * (MAX_BUILD_LENGTH + 1),
        "a\nb",
        "a\x00",
        "tab\there",
        "\u200b",
    ],
)
def test_odd_build_ids_are_refused_with_one_line(build: str) -> None:
    with pytest.raises(UsageError) as caught:
        validate_build(build)
    assert "\n" not in caught.value.message and "\x00" not in caught.value.message
    with pytest.raises(UsageError):
        registry().publish(build, manifest("a"))


@pytest.mark.parametrize(
    "build", ["v1", "2026.12.01-abc123", "x" * MAX_BUILD_LENGTH, "release 1", "é-ü", "a:b@c"]
)
def test_ordinary_build_ids_are_accepted(build: str) -> None:
    assert validate_build(build) == build


@given(st.text(max_size=200))
def test_validate_build_accepts_exactly_the_safe_ids(value: str) -> None:
    ok = (
        0 < len(value) <= MAX_BUILD_LENGTH
        and value.strip() != ""
        and value.isprintable()
        and "/" not in value
        and "\\" not in value
        and value not in (".", "..")
    )
    try:
        assert validate_build(value) == value
    except UsageError as exc:
        assert not ok
        assert "\n" not in exc.message and len(exc.message) < 320
    else:
        assert ok


@given(st.text(min_size=1, max_size=MAX_BUILD_LENGTH).filter(lambda s: s.strip() and s.isprintable()))
def test_any_valid_build_round_trips_through_the_directory_store(value: str) -> None:
    import tempfile

    try:
        validate_build(value)
    except UsageError:
        return
    with tempfile.TemporaryDirectory() as tmp:
        reg = ManifestRegistry(DirectoryManifestStore(Path(tmp)), now=Clock())
        try:
            reg.publish(value, manifest("a"))
        except UsageError as exc:  # a file name the file system refuses (too long in bytes)
            assert "cannot write" in exc.message
            return
        assert reg.get(value) == manifest("a")
        assert [e.build for e in reg.entries()] == [value]


def test_the_directory_store_writes_atomically_and_lists_only_entries(tmp_path: Path) -> None:
    reg = ManifestRegistry(DirectoryManifestStore(tmp_path / "reg"), limit=2, now=Clock())
    reg.publish("v1", manifest("a"))
    reg.publish("v2", manifest("b"))
    assert sorted(p.name for p in (tmp_path / "reg").iterdir()) == ["v1.json", "v2.json"]
    (tmp_path / "reg" / ".v3.123.tmp").write_text("half")  # a writer that died
    (tmp_path / "reg" / "notes.txt").write_text("x")
    assert [e.build for e in reg.entries()] == ["v2", "v1"]
    assert reg.publish("v3", manifest("c")).dropped == ("v1",)
    assert not (tmp_path / "reg" / "v1.json").exists()


def test_the_directory_store_reports_an_unwritable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    reg = ManifestRegistry(DirectoryManifestStore(blocker / "reg"))
    with pytest.raises(UsageError, match=r"the manifest registry .*directory"):
        reg.publish("v1", manifest("a"))
