"""``check --broker``: scan verdicts become WAITING_* findings pointing at the new code."""

from __future__ import annotations

from datetime import datetime, timezone

from deploykit.manifest.model import Manifest, Parameter, Task
from deploykit.manifest.rules import Level
from deploykit.messages import StoredHeaders
from deploykit.scan.decode import DecodedMessage, TaskCall
from deploykit.scan.engine import Item, Judge, Report, scan
from deploykit.scan.findings import scan_findings
from deploykit.scan.run import task_specs

NEW = Manifest(
    tasks={
        "t.notify": Task(
            "t.notify",
            (Parameter("user", "POSITIONAL_OR_KEYWORD"), Parameter("channel", "POSITIONAL_OR_KEYWORD")),
            qualname="notify",
            file="proj/tasks.py",
            line=12,
        ),
    }
)


def item(name, args, location="queue:celery"):
    return Item(
        location, StoredHeaders(id="x"), 10, DecodedMessage("x", name, (TaskCall(name, args, {}),), None)
    )


def test_breaking_groups_become_findings_and_runs_do_not():
    report = scan(
        [
            item("t.notify", (1,)),
            item("t.notify", (1,), "unacked:celery"),
            item("t.notify", (1, "sms")),
            item("t.gone", ()),
        ],
        Judge(task_specs(NEW)),
        Report(datetime.now(timezone.utc), 100),
    )
    found = {f.rule: f for f in scan_findings(report, NEW)}
    assert set(found) == {"WAITING_FAILS", "WAITING_DISCARDED"}
    fails = found["WAITING_FAILS"]
    assert fails.level is Level.ERROR and (fails.file, fails.line) == ("proj/tasks.py", 12)
    assert fails.message.startswith(
        "2 waiting message(s) would fail (in queue:celery (1), unacked:celery (1))"
    )
    assert "missing 1 required positional argument: 'channel'" in fails.message
    assert found["WAITING_DISCARDED"].file is None


def test_each_reason_keeps_its_own_count_and_the_numbers_are_data():
    """3 messages fail for two different reasons: both are reported, each with its count, and a
    pipeline reads the numbers without parsing the message."""
    from deploykit.messages import NO_HEADERS

    beat = Item(
        "beat:hourly",
        NO_HEADERS,
        None,
        DecodedMessage(None, "t.notify", (TaskCall("t.notify", (1,), {}),), None),
    )
    items = [
        Item(
            "queue:celery",
            StoredHeaders(id="a", eta="2026-11-21T10:00:00+00:00"),
            10,
            DecodedMessage("a", "t.notify", (TaskCall("t.notify", (1,), {}),), None),
        ),
        Item(
            "queue:celery",
            StoredHeaders(id="b", eta="2026-11-21T12:00:00+00:00"),
            10,
            DecodedMessage("b", "t.notify", (TaskCall("t.notify", (1,), {}),), None),
        ),
        Item(
            "unacked:celery",
            StoredHeaders(id="c"),
            10,
            DecodedMessage("c", "t.notify", (TaskCall("t.notify", (1, 2, 3), {}),), None),
        ),
        beat,
    ]
    report = scan(items, Judge(task_specs(NEW)), Report(datetime.now(timezone.utc), 100))
    (fails,) = scan_findings(report, NEW)
    assert fails.message.startswith("3 waiting message(s) and 1 beat entry would fail")
    assert "3 x TypeError: notify() missing 1 required positional argument: 'channel'" in fails.message
    assert "1 x TypeError: notify() takes 2 positional arguments but 3 were given" in fails.message
    assert fails.data == {
        "verdict": "fails",
        "count": 3,
        "beat_entries": 1,
        "locations": {"queue:celery": 2, "unacked:celery": 1, "beat:hourly": 1},
        "reasons": {
            "TypeError: notify() missing 1 required positional argument: 'channel'": 3,
            "TypeError: notify() takes 2 positional arguments but 3 were given": 1,
        },
        "sample_ids": ["a", "b", "c"],
        "earliest_eta": "2026-11-21T10:00:00+00:00",
        "latest_eta": "2026-11-21T12:00:00+00:00",
        "expired": 0,
    }
