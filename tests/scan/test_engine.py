"""Verdicts and aggregation of the compatibility scan, against hand-made signatures."""

from __future__ import annotations

import inspect
from datetime import datetime, timedelta, timezone

from deploykit.messages import NO_HEADERS, StoredHeaders
from deploykit.scan.bind import Param, TaskSpec
from deploykit.scan.decode import DecodedMessage, TaskCall, Undecodable
from deploykit.scan.engine import Item, Judge, Report, Verdict, scan
from deploykit.scan.sources import beat_items, worker_items

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)


def spec(name, func, bound=False):
    params = tuple(
        Param(p.name, p.kind.name, p.default is not inspect.Parameter.empty)
        for p in inspect.signature(func).parameters.values()
    )
    return TaskSpec(name, func.__name__, params, bound, qualname=func.__name__)


def old_transfer(source, target, amount): ...
def transfer(target, source, amount): ...  # reordered: misbound
def old_notify(user): ...
def notify(user, channel): ...  # required param added: fails
def report(account, period="month"): ...


OLD = {
    "bank.transfer": spec("bank.transfer", old_transfer),
    "notify": spec("notify", old_notify),
    "report": spec("report", report),
    "legacy": spec("legacy", old_notify),
}
NEW = {
    "bank.transfer": spec("bank.transfer", transfer),
    "notify": spec("notify", notify),
    "report": spec("report", report),
}


def msg(
    name,
    args=(),
    kwargs=None,
    task_id="id",
    extra=(),
    eta=None,
    expires=None,
    size=100,
    location="queue:celery",
):
    calls = (TaskCall(name, tuple(args), kwargs or {}), *extra)
    headers = StoredHeaders(
        id=task_id,
        eta=eta.isoformat() if eta else None,
        expires=expires.isoformat() if expires else None,
    )
    return Item(location, headers, size, DecodedMessage(task_id, name, calls, "application/json"))


def run(items, old=OLD):
    return scan(items, Judge(NEW, old), Report(NOW, oversize=1000))


def test_each_verdict():
    items = [
        msg("report", (1,), task_id="ok"),
        msg("bank.transfer", ("a", "b", 5), task_id="swap"),
        msg("bank.transfer", (), {"source": "a", "target": "b", "amount": 5}, task_id="kw"),
        msg("notify", (7,), task_id="fail"),
        msg("legacy", (1,), task_id="gone"),
        Item(
            "queue:celery",
            NO_HEADERS,
            10,
            Undecodable("bad", "report", "pickle payload (never unpickled)", None),
        ),
    ]
    report = run(items)
    verdicts = {(g.task, g.verdict): g.samples for g in report.groups.values()}
    assert verdicts == {
        ("report", Verdict.RUNS): ["ok"],
        ("bank.transfer", Verdict.MISBOUND): ["swap"],
        ("bank.transfer", Verdict.RUNS): ["kw"],
        ("notify", Verdict.FAILS): ["fail"],
        ("legacy", Verdict.DISCARDED): ["gone"],
        ("report", Verdict.UNDECIDABLE): ["bad"],
    }
    fails = report.groups[("notify", Verdict.FAILS)]
    assert list(fails.reasons) == ["TypeError: notify() missing 1 required positional argument: 'channel'"]
    swap = report.groups[("bank.transfer", Verdict.MISBOUND)]
    assert "source→target, target→source" in next(iter(swap.reasons))
    assert report.breaking == 3


def test_without_old_manifest_reorder_cannot_be_seen():
    report = run([msg("bank.transfer", ("a", "b", 5))], old=None)
    assert dict(report.totals) == {Verdict.RUNS: 1}


def test_embedded_callback_decides_the_verdict():
    callback = TaskCall("notify", (), {}, via="callback", prepended=1)
    gone = TaskCall("legacy", (1,), {}, via="chain", prepended=0)
    report = run([msg("report", (1,), extra=(callback,)), msg("report", (1,), extra=(gone,), task_id="2")])
    assert report.totals[Verdict.FAILS] == 1 and report.totals[Verdict.DISCARDED] == 1
    (reason,) = report.groups[("report", Verdict.FAILS)].reasons
    assert reason.startswith("callback notify: TypeError")


def test_eta_range_expiry_and_sizes():
    items = [
        msg("report", (1,), eta=NOW + timedelta(hours=2), task_id="a", size=50),
        msg("report", (2,), eta=NOW + timedelta(minutes=1), task_id="b", size=5000),
        msg("report", (3,), expires=NOW - timedelta(minutes=1), task_id="c", size=70),
        msg("report", (4,), task_id="d", size=60),
    ]
    report = run(items)
    group = report.groups[("report", Verdict.RUNS)]
    assert group.count == 4 and group.expired == 1 and report.expired == 1
    assert group.earliest_eta == NOW + timedelta(minutes=1)
    assert group.latest_eta == NOW + timedelta(hours=2)
    assert group.samples == ["a", "b", "c"]
    assert sorted(report.largest["report"], reverse=True) == [(5000, "b"), (70, "c"), (60, "d")]
    assert report.oversized["report"] == 1


def test_memory_is_bounded_by_groups_not_messages():
    report = run(msg("notify", (i,), task_id=str(i)) for i in range(20_000))
    group = report.groups[("notify", Verdict.FAILS)]
    assert group.count == 20_000 and len(group.samples) == 3 and len(group.reasons) == 1


def test_worker_items_skip_ids_already_read_from_the_broker():
    replies = {
        "reserved": {"w1@h": [{"id": "r1", "type": "notify", "args": [1], "kwargs": {}}]},
        "scheduled": {
            "w1@h": [
                {
                    "eta": (NOW + timedelta(minutes=5)).isoformat(),
                    "request": {"id": "s1", "type": "report", "args": "(1, 2, 3)", "kwargs": "{}"},
                },
                {"eta": None, "request": {"id": "dup", "type": "report", "args": [], "kwargs": {}}},
            ]
        },
    }
    items = list(worker_items(replies, skip_ids={"dup"}))
    assert [i.decoded.task_id for i in items] == ["r1", "s1"]
    report = run(items)
    assert report.totals[Verdict.FAILS] == 2  # notify lacks channel; report gets 3 positionals
    assert report.by_location["worker"] == 2


def test_beat_entries():
    class Conf:
        beat_schedule = {
            "nightly": {"task": "report", "schedule": 60, "args": (1,)},
            "ping": {"task": "notify", "schedule": 60, "kwargs": {"user": 1}},
            "old": {"task": "legacy", "schedule": 60},
        }

    class App:
        conf = Conf()

    report = run(beat_items(App()))
    assert {(g.task, g.verdict) for g in report.groups.values()} == {
        ("report", Verdict.RUNS),
        ("notify", Verdict.FAILS),
        ("legacy", Verdict.DISCARDED),
    }
    assert report.groups[("report", Verdict.RUNS)].locations == {"beat:nightly": 1}


def old_mail(user_mailer_id, subject): ...
def mail(mailing_profile_id, subject): ...  # renamed in place (PARAM_RENAMED)
def old_log(level, *args): ...
def log(level, *values): ...  # *args renamed: extra values still land in it


def test_a_parameter_renamed_in_place_binds_positional_values_as_before():
    old = {"mail": spec("mail", old_mail), "log": spec("log", old_log)}
    new = {"mail": spec("mail", mail), "log": spec("log", log)}
    judge = Judge(new, old, renames={"mail": {"user_mailer_id": "mailing_profile_id"}})
    report = scan(
        [
            msg("mail", (7, "hi"), task_id="positional"),
            msg("mail", (), {"user_mailer_id": 7, "subject": "hi"}, task_id="old-keyword"),
            msg("mail", (), {"mailing_profile_id": 7, "subject": "hi"}, task_id="new-keyword"),
            msg("log", ("info", 1, 2), task_id="star"),
        ],
        judge,
        Report(NOW, oversize=1000),
    )
    verdicts = {(g.task, g.verdict): g.samples for g in report.groups.values()}
    assert verdicts == {
        ("mail", Verdict.RUNS): ["positional", "new-keyword"],
        ("mail", Verdict.FAILS): ["old-keyword"],
        ("log", Verdict.RUNS): ["star"],
    }
    (reason,) = report.groups[("mail", Verdict.FAILS)].reasons
    assert "unexpected keyword argument 'user_mailer_id'" in reason
