"""Each stamped message is judged against the manifest of the build that produced it.

The registry here is the real :class:`~deploykit.registry.ManifestRegistry` over an in-memory
store; the broker is the scan tests' fake. Three releases of ``bank.transfer``: build A (v1,
``source, target, amount``), build B (v2, ``target, source, amount``: reordered) and the new
code (v3: v2 plus an optional ``currency``). A positional message of A lands on other parameters
under v3; the same call from B binds as B meant it.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from deploykit.brokers.envelope import parse_ready
from deploykit.brokers.manifest_store import MemoryManifestStore
from deploykit.manifest.model import Manifest, Parameter, Task
from deploykit.messages import StoredHeaders
from deploykit.registry import ManifestRegistry
from deploykit.scan import engine
from deploykit.scan.decode import DecodedMessage, TaskCall
from deploykit.scan.engine import BuildStatus, Item, OldBuilds, Report, Verdict, judge_raw, scan
from deploykit.scan.run import PeekOptions, build_judge, registry_builds, scan_waiting
from tests.scan.test_fast_paths import EMBED
from tests.scan.test_run import Rabbit

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
POK = "POSITIONAL_OR_KEYWORD"


def release(*params: str, currency: bool = False) -> Manifest:
    parameters = tuple(Parameter(p, POK) for p in params)
    if currency:
        parameters += (Parameter("currency", POK, has_default=True),)
    return Manifest(tasks={"bank.transfer": Task("bank.transfer", parameters, qualname="transfer")})


V1 = release("source", "target", "amount")
V2 = release("target", "source", "amount")
V3 = release("target", "source", "amount", currency=True)
MISBOUND = "positional arguments land on other parameters (source→target, target→source)"


def stamped(build: Any, args: list[Any], *, task_id: str = "id-1") -> bytes:
    """A Redis-stored message of ``bank.transfer`` with a ``deploykit_build`` header (``None``:
    unstamped)."""
    import base64

    headers: dict[str, Any] = {"lang": "py", "task": "bank.transfer", "id": task_id, "eta": None}
    if build is not None:
        headers["deploykit_build"] = build
    body = base64.b64encode(json.dumps([args, {}, EMBED]).encode()).decode()
    return json.dumps(
        {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {"body_encoding": "base64", "delivery_tag": task_id},
        }
    ).encode()


def registry(**manifests: Manifest) -> ManifestRegistry:
    reg = ManifestRegistry(MemoryManifestStore())
    for build, manifest in manifests.items():
        reg.publish(build, manifest)
    return reg


def verdicts(report: Report) -> dict[Verdict, int]:
    return {v: n for v, n in report.totals.items() if n}


def test_each_build_is_judged_against_its_own_manifest() -> None:
    builds = registry_builds(registry(A=V1, B=V2), V3)
    report = Report(NOW, 10**6)
    raws = parse_ready(
        "celery",
        [stamped("A", ["s", "t", 5])] * 3
        + [stamped("B", ["t", "s", 5])] * 2
        + [stamped(None, ["t", "s", 5])],
    )
    judge_raw(raws, "queue:celery", build_judge(V3, None, builds=builds), report)
    assert verdicts(report) == {Verdict.MISBOUND: 3, Verdict.RUNS: 3}
    assert list(report.groups[("bank.transfer", Verdict.MISBOUND)].reasons) == [MISBOUND]
    assert report.old_builds is builds
    assert [(c.build, c.messages, c.status) for c in builds.rows()] == [
        ("A", 3, BuildStatus.MANIFEST),
        ("B", 2, BuildStatus.MANIFEST),
    ]
    assert (builds.stamped, builds.unknown) == (5, 0)


def test_unstamped_and_unknown_builds_keep_the_given_old_side() -> None:
    """Without a build manifest, the --manifest old side (here v1) judges, as before."""
    builds = registry_builds(registry(B=V2), V3)
    report = Report(NOW, 10**6)
    raws = parse_ready(
        "celery",
        [stamped(build, ["s", "t", 5]) for build in (None, "Z", 7)] + [stamped("B", ["t", "s", 5])],
    )
    judge_raw(raws, "queue:celery", build_judge(V3, V1, builds=builds), report)
    assert verdicts(report) == {Verdict.MISBOUND: 3, Verdict.RUNS: 1}
    assert (builds.stamped, builds.unknown) == (3, 2)
    assert [(c.build, c.status) for c in builds.rows()] == [
        ("B", BuildStatus.MANIFEST),
        ("Z", BuildStatus.UNKNOWN),
    ]
    # Without --manifest the unknown ones have no old side: misbinding cannot be seen there.
    plain = Report(NOW, 10**6)
    judge_raw(raws, "queue:celery", build_judge(V3, None, builds=registry_builds(registry(B=V2), V3)), plain)
    assert verdicts(plain) == {Verdict.RUNS: 4}


def test_each_manifest_is_loaded_once_and_the_builds_looked_up_are_bounded(monkeypatch) -> None:
    loads: list[str] = []

    def load(build: str) -> engine.Judge | None:
        loads.append(build)
        return build_judge(V3, V1) if build.startswith("old") else None

    monkeypatch.setattr(engine, "MAX_BUILDS", 3)
    builds = OldBuilds(load, registry="memory")
    judge = build_judge(V3, None, builds=builds)
    report = Report(NOW, 10**6)
    data = [stamped(b, ["s", "t", 5]) for b in ["old-1", "new-1", "old-1", "old-2", "old-3", "old-4"] * 10]
    judge_raw(parse_ready("celery", data), "queue:celery", judge, report)
    assert loads == ["old-1", "new-1", "old-2"]
    assert [(c.build, c.messages) for c in builds.rows()] == [("old-1", 20), ("new-1", 10), ("old-2", 10)]
    # Beyond the bound: judged as of an unknown build (here: no old side, so it runs).
    assert (builds.other, builds.unknown) == (20, 30)
    assert verdicts(report) == {Verdict.MISBOUND: 30, Verdict.RUNS: 30}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{not json", "registry entry of build 'C' is corrupt (not JSON)"),
        (
            json.dumps({"registry": 99, "build": "C", "published_at": 1.0}).encode(),
            "registry entry of build 'C' has format 99, newer than this deploykit reads (1): "
            "upgrade deploykit",
        ),
    ],
)
def test_an_unusable_registry_entry_makes_its_builds_messages_undecidable(data: bytes, problem: str) -> None:
    reg = registry(A=V1)
    reg.store.write("C", data, 1.0)
    builds = registry_builds(reg, V3)
    report = Report(NOW, 10**6)
    raws = parse_ready("celery", [stamped("C", ["t", "s", 5])] * 2 + [stamped("A", ["s", "t", 5])])
    judge_raw(raws, "queue:celery", build_judge(V3, None, builds=builds), report)
    assert verdicts(report) == {Verdict.UNDECIDABLE: 2, Verdict.MISBOUND: 1}
    group = report.groups[("bank.transfer", Verdict.UNDECIDABLE)]
    assert list(group.reasons) == [f"build 'C': {problem}"]
    (row,) = [c for c in builds.rows() if c.build == "C"]
    assert (row.status, row.messages, row.problem) == (BuildStatus.UNREADABLE, 2, problem)


def test_a_build_id_no_registry_entry_can_have_is_unknown_without_a_lookup() -> None:
    reg = registry(A=V1)
    builds = registry_builds(reg, V3)
    assert builds.judge("a/b") is None and builds.judge("x\x00") is None and builds.judge("") is None
    assert builds.unknown == 3


def test_worker_reported_and_item_paths_use_the_build_too() -> None:
    builds = registry_builds(registry(A=V1), V3)
    call = TaskCall("bank.transfer", ("s", "t", 5), {})
    items = [
        Item(
            "queue:celery",
            StoredHeaders(id=f"i{n}", deploykit_build=build),
            10,
            DecodedMessage(f"i{n}", "bank.transfer", (call,), None),
        )
        for n, build in enumerate(["A", None])
    ]
    report = scan(items, build_judge(V3, None, builds=builds), Report(NOW, 10**6))
    assert verdicts(report) == {Verdict.MISBOUND: 1, Verdict.RUNS: 1}
    assert report.old_builds is builds and builds.stamped == 1


def test_scan_waiting_says_how_each_build_was_judged() -> None:
    reg = registry(A=V1, B=V2)
    reg.store.write("C", b"{not json", 1.0)
    data = (
        [stamped("A", ["s", "t", 5], task_id=f"a{i}") for i in range(3)]
        + [stamped("B", ["t", "s", 5], task_id=f"b{i}") for i in range(2)]
        + [stamped("Z", ["t", "s", 5]), stamped("C", ["t", "s", 5]), stamped(None, ["t", "s", 5])]
    )
    broker = Rabbit({"celery": parse_ready("celery", data)}, known=["celery"])
    report = scan_waiting(
        broker,
        new=V3,
        old=None,
        include_beat=False,
        peek=PeekOptions(100),
        old_builds=registry_builds(reg, V3),
    )
    assert verdicts(report) == {Verdict.MISBOUND: 3, Verdict.RUNS: 4, Verdict.UNDECIDABLE: 1}
    assert report.notes[-2:] == [
        "stamped messages (7): judged against their build's manifest: A 3, B 2; 1 of an unknown build "
        "(no old side; registry: memory); 1 of build C undecidable (its registry entry is unusable)",
        "no old manifest given (--manifest): reordered parameters cannot be detected in the 2 message(s) "
        "without their build's manifest",
    ]


def test_scan_waiting_without_a_registry_says_why_and_keeps_todays_notes() -> None:
    broker = Rabbit({"celery": parse_ready("celery", [stamped("A", ["s", "t", 5])])}, known=["celery"])
    report = scan_waiting(
        broker,
        new=V3,
        old=V1,
        include_beat=False,
        peek=PeekOptions(100),
        old_builds=registry_builds(None, V3, problem="no place for it"),
    )
    assert verdicts(report) == {Verdict.MISBOUND: 1}
    assert report.notes[-1] == (
        "stamped messages (1): 1 of an unknown build (judged against the old manifest (--manifest); "
        "no registry: no place for it)"
    )
    # Nothing stamped: exactly today's notes.
    broker = Rabbit({"celery": parse_ready("celery", [stamped(None, ["s", "t", 5])])}, known=["celery"])
    report = scan_waiting(
        broker,
        new=V3,
        old=None,
        include_beat=False,
        peek=PeekOptions(100),
        old_builds=registry_builds(None, V3),
    )
    assert report.notes[-1] == "no old manifest given (--manifest): reordered parameters cannot be detected"
    assert not any("stamped" in note for note in report.notes)


def test_every_message_judged_against_its_build_needs_no_manifest_note() -> None:
    broker = Rabbit({"celery": parse_ready("celery", [stamped("A", ["s", "t", 5])])}, known=["celery"])
    report = scan_waiting(
        broker,
        new=V3,
        old=None,
        include_beat=False,
        peek=PeekOptions(100),
        old_builds=registry_builds(registry(A=V1), V3),
    )
    assert verdicts(report) == {Verdict.MISBOUND: 1}
    assert not any("no old manifest" in note for note in report.notes)
