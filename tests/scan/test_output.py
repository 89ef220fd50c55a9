"""Scan report renderers: JSON document, GitHub annotations and step summary, text."""

from __future__ import annotations

import io
from datetime import datetime, timezone

from rich.console import Console

from deploykit.messages import NO_HEADERS, StoredHeaders
from deploykit.output import scan as out
from deploykit.scan.decode import DecodedMessage, TaskCall, Undecodable
from deploykit.scan.engine import Item, Judge, Report, scan
from deploykit.scan.run import task_specs
from tests.scan.test_findings import NEW

NOW = datetime(2026, 11, 21, tzinfo=timezone.utc)


def report() -> Report:
    items = [
        Item(
            "queue:celery",
            StoredHeaders(id=f"f{i}", eta="2026-11-21T10:00:00+00:00"),
            5000,
            DecodedMessage(f"f{i}", "t.notify", (TaskCall("t.notify", (1,), {}),), None),
        )
        for i in range(12)
    ]
    items.append(
        Item(
            "queue:celery",
            NO_HEADERS,
            10,
            Undecodable("u", "t.notify", "pickle payload (never unpickled); x", None),
        )
    )
    items.append(
        Item(
            "beat:nightly",
            NO_HEADERS,
            None,
            DecodedMessage(None, "t.notify", (TaskCall("t.notify", (1, "sms"), {}),), None),
        )
    )
    return scan(items, Judge(task_specs(NEW)), Report(NOW, oversize=1000))


def test_json_document():
    doc = out.document(report(), new="app proj", old=None, broker="redis://h/0")
    assert doc["schema"] == "deploykit.scan/2"
    # Messages only: the beat entry is counted apart, once.
    assert doc["totals"] == {
        "runs": 0,
        "misbound": 0,
        "fails": 12,
        "discarded": 0,
        "undecidable": 1,
        "scanned": 13,
        "breaking": 12,
        "expired": 0,
        "waiting": 13,
        "unchecked": 0,
        "unchecked_unknown": False,
    }
    assert doc["beat"] == {
        "runs": 1,
        "misbound": 0,
        "fails": 0,
        "discarded": 0,
        "undecidable": 0,
        "entries": 1,
        "breaking": 0,
    }
    assert doc["verdict"] == "unsafe" and doc["unchecked"] == []
    runs = next(g for g in doc["groups"] if g["verdict"] == "runs")
    assert (runs["count"], runs["beat_entries"]) == (0, 1)
    first = doc["groups"][0]
    assert (first["task"], first["verdict"], first["count"]) == ("t.notify", "fails", 12)
    assert first["sample_ids"] == ["f0", "f1", "f2"] and first["locations"] == {"queue:celery": 12}
    assert doc["oversized"] == {"t.notify": 12} and len(doc["largest"]["t.notify"]) == 3
    assert doc["undecidable_reasons"] == {"pickle payload (never unpickled)": 1}


def test_github_annotations_and_summary(tmp_path, monkeypatch):
    """The WAITING_* findings, annotated and tabulated by the renderer check and doctor use."""
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    lines: list[str] = []
    out.render_github(report(), lines.append)
    assert lines[0].startswith(
        "::error title=WAITING_FAILS (t.notify)::12 waiting message(s) would fail (in queue:celery (12)): "
        "TypeError: notify()"
    )
    assert lines[1].startswith("::warning title=WAITING_UNDECIDABLE (t.notify)::1 waiting message(s)")
    assert lines[-1].startswith("deploykit scan: UNSAFE  13 message(s) checked")
    assert all(line.endswith("\n") for line in lines)
    text = summary.read_text()
    fails = "https://deploykit.readthedocs.io/en/stable/rules/waiting-fails/"
    assert text.startswith("### deploykit scan: waiting messages\n")
    assert f"| error | [`WAITING_FAILS`]({fails}) | `t.notify` |  | 12 waiting message(s) would fail" in text
    assert lines[0].rstrip().endswith(f"See {fails}")


def test_github_annotations_are_capped_per_kind(tmp_path, monkeypatch):
    """One truncation rule for every command: 10 per kind, the rest counted once."""
    items = [
        Item(
            "queue:celery",
            StoredHeaders(id=f"g{i}"),
            10,
            DecodedMessage(f"g{i}", f"t.gone{i}", (TaskCall(f"t.gone{i}", (), {}),), None),
        )
        for i in range(13)
    ]
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    lines: list[str] = []
    out.render_github(scan(items, Judge(task_specs(NEW)), Report(NOW, oversize=1000)), lines.append)
    assert sum(line.startswith("::error title=WAITING_DISCARDED") for line in lines) == 10
    assert lines[-2].startswith("deploykit scan: 3 more finding(s) not annotated")


def test_every_breaking_or_undecidable_group_links_its_rule_page(monkeypatch):
    """The WAITING_* rule's page, from the one URL builder (configurable base), in every format."""
    monkeypatch.setenv("DEPLOYKIT_DOCS_URL", "https://mirror.example.org/dk")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    fails = "https://mirror.example.org/dk/waiting-fails/"
    undecidable = "https://mirror.example.org/dk/waiting-undecidable/"
    doc = out.document(report(), new="app proj", old=None, broker=None)
    links = {(g["verdict"], g["rule"], g["docs"]) for g in doc["groups"]}
    assert links == {
        ("fails", "WAITING_FAILS", fails),
        ("undecidable", "WAITING_UNDECIDABLE", undecidable),
        ("runs", None, None),
    }
    buffer = io.StringIO()
    out.render_text(report(), Console(file=buffer, width=200, no_color=True))
    assert f"docs: {fails}" in buffer.getvalue() and f"docs: {undecidable}" in buffer.getvalue()
    lines: list[str] = []
    out.render_github(report(), lines.append)
    assert lines[0].rstrip().endswith(f"See {fails}") and lines[1].rstrip().endswith(f"See {undecidable}")


def test_text_blocks_worst_first():
    buffer = io.StringIO()
    out.render_text(report(), Console(file=buffer, width=200, no_color=True))
    text = buffer.getvalue()
    assert text.index("FAILS") < text.index("UNDECIDABLE") < text.index("RUNS")
    assert "missing 1 required positional argument: 'channel'" in text
    assert "Oversized: 12 message(s) of t.notify exceed 1000 bytes" in text
    assert "RUNS        t.notify  1 beat entry in beat:nightly x1" in text
    assert text.rstrip().endswith(
        "UNSAFE  13 message(s) checked: 0 runs, 0 misbound, 12 fails, 0 discarded, 1 undecidable; "
        "1 beat entry: 1 runs"
    )


def stamped_report() -> Report:
    """:func:`report` plus messages stamped with builds: one with its manifest in the registry,
    one unknown to it, one whose entry is corrupt."""
    from deploykit.errors import UsageError
    from deploykit.manifest.model import Manifest, Parameter, Task
    from deploykit.scan.engine import OldBuilds

    pok = "POSITIONAL_OR_KEYWORD"
    old = Manifest(tasks={"t.notify": Task("t.notify", (Parameter("channel", pok), Parameter("user", pok)))})

    def load(build: str) -> Judge | None:
        if build == "c3":
            raise UsageError("registry entry of build 'c3' is corrupt (not JSON)")
        return Judge(task_specs(NEW), task_specs(old)) if build == "a1" else None

    result = report()
    judge = Judge(task_specs(NEW), builds=OldBuilds(load, registry="memory"))
    items = [
        Item(
            "queue:celery",
            StoredHeaders(id=f"s{i}", deploykit_build=build),
            10,
            DecodedMessage(f"s{i}", "t.notify", (TaskCall("t.notify", (1, "sms"), {}),), None),
        )
        for i, build in enumerate(["a1", "a1", "b2", "c3"])
    ]
    return scan(items, judge, result)


def test_json_document_counts_the_messages_of_each_build():
    doc = out.document(stamped_report(), new="app proj", old=None, broker=None)
    assert doc["old_builds"] == {
        "registry": "memory",
        "stamped": 4,
        "unknown": 1,
        "builds": [
            {"build": "a1", "messages": 2, "old_side": "manifest", "problem": None},
            {"build": "b2", "messages": 1, "old_side": "unknown", "problem": None},
            {
                "build": "c3",
                "messages": 1,
                "old_side": "unreadable",
                "problem": "registry entry of build 'c3' is corrupt (not JSON)",
            },
        ],
    }
    # a1's against its manifest (reordered), b2's (unknown) as unstamped ones, c3's undecidable.
    assert (doc["totals"]["misbound"], doc["totals"]["undecidable"]) == (2, 2)
    assert doc["totals"]["runs"] == 1
    plain = out.document(report(), new="app proj", old=None, broker=None)
    assert plain["old_builds"] == {"registry": None, "stamped": 0, "unknown": 0, "builds": []}
