"""``check --broker`` adds the scan's verdicts to the check report: ``WAITING_*`` findings after
the manifest's own, what was read in the notes, what was not as ``incomplete`` (exit 5)."""

from __future__ import annotations

from datetime import datetime, timezone

from deploykit.manifest.check import compare, with_waiting
from deploykit.manifest.model import Manifest, Parameter, Task
from deploykit.messages import StoredHeaders
from deploykit.scan.decode import DecodedMessage, TaskCall
from deploykit.scan.engine import Item, Judge, Report, Unchecked, scan
from deploykit.scan.run import task_specs

POK = "POSITIONAL_OR_KEYWORD"
OLD = Manifest(tasks={"t.notify": Task("t.notify", (Parameter("user", POK),), qualname="notify")})
NEW = Manifest(
    tasks={
        "t.notify": Task(
            "t.notify",
            (Parameter("user", POK), Parameter("channel", POK)),
            qualname="notify",
            file="proj/tasks.py",
            line=12,
        )
    }
)


def scanned(*args: tuple[int, ...]) -> Report:
    items = [
        Item("queue:celery", StoredHeaders(id=str(i)), 10, DecodedMessage(str(i), "t.notify", (call,), None))
        for i, call in enumerate(TaskCall("t.notify", a, {}) for a in args)
    ]
    report = scan(items, Judge(task_specs(NEW)), Report(datetime.now(timezone.utc), 100))
    report.notes.append("queues read: celery")
    return report


def test_failing_waiting_messages_are_findings_after_the_manifests_own_and_fail_the_check():
    report = compare(OLD, NEW, command="check", old_label="m.json", new_label="code", fail_on="error")
    assert report.findings  # the new required parameter
    merged = with_waiting(report, scanned((1,), (1,), (1, "sms")), NEW, broker="redis://h:6379/0")
    assert merged.findings[: len(report.findings)] == report.findings
    waiting = merged.findings[len(report.findings) :]
    assert [f.rule for f in waiting] == ["WAITING_FAILS"]
    assert (waiting[0].file, waiting[0].line, waiting[0].data["count"]) == ("proj/tasks.py", 12, 2)
    assert merged.notes == (
        *report.notes,
        "broker redis://h:6379/0: 3 waiting message(s) checked",
        "queues read: celery",
    )
    assert merged.failed and merged.incomplete is None and merged.unchecked is None
    assert (merged.command, merged.old, merged.new, merged.fail_on) == ("check", "m.json", "code", "error")


def test_waiting_messages_not_read_make_the_check_incomplete_with_the_numbers_as_data():
    scan_report = scanned((1, "sms"))
    scan_report.unchecked.append(
        Unchecked("queue:celery", 7, "rabbitmq has no non-destructive read", "pass --peek")
    )
    report = compare(OLD, NEW, command="check", old_label="m.json", new_label="code", fail_on="never")
    merged = with_waiting(report, scan_report, NEW, broker=None)
    assert not merged.failed and merged.verdict == "incomplete"
    assert merged.incomplete == scan_report.incomplete_summary()
    assert merged.unchecked is not None and merged.unchecked["unchecked"] == 7
    assert merged.unchecked["locations"] == [
        {
            "location": "queue:celery",
            "count": 7,
            "reason": "rabbitmq has no non-destructive read",
            "remedy": "pass --peek",
        }
    ]
