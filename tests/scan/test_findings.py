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
