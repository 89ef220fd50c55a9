"""``run_scan`` accounts for every waiting message the broker reports, and counts beat entries
apart from messages, once each; Celery's built-ins are never "no longer registered"."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from deploykit.brokers.base import Broker, DelayedStore, QueueStats, RawMessage, ReadRefusal, ReadRefused
from deploykit.brokers.envelope import parse_ready
from deploykit.manifest.model import Manifest, Parameter, Task
from deploykit.messages import NO_HEADERS
from deploykit.scan.decode import DecodedMessage, TaskCall
from deploykit.scan.engine import Item, Report, Verdict
from deploykit.scan.run import PeekOptions, build_judge, queues_to_scan, run_scan, scan_app_beat, scan_waiting
from deploykit.scan.sources import _beat_item
from tests.fakes import FakeBroker, FakeFleet
from tests.scan.test_fast_paths import EMBED, envelope

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
POK = "POSITIONAL_OR_KEYWORD"
NEW = Manifest(
    tasks={
        "notify": Task("notify", (Parameter("user", POK), Parameter("channel", POK)), qualname="notify"),
        "report": Task("report", (Parameter("account", POK),), qualname="report"),
    }
)


def messages(count: int, task: str = "report", args: list[Any] | None = None) -> list[RawMessage]:
    data = envelope([args if args is not None else [1], {}, EMBED], task=task)
    return parse_ready("celery", [data] * count)


class App:
    """Just what the scan reads of a Celery app: its beat schedule."""

    def __init__(self, schedule: dict[str, Any]) -> None:
        self.conf = type("Conf", (), {"beat_schedule": schedule})()


BEAT = App({f"e{i}": {"task": "report", "schedule": 60, "args": (i,)} for i in range(21)})


class Rabbit(FakeBroker):
    """A broker with no non-destructive read (like RabbitMQ): ``iter_pages`` refuses; peeking
    returns up to ``limit`` of the queue's messages, refuses quorum queues unless forced, and
    queues it does not know. It does not show what workers hold (``shows_unacked`` is False)."""

    def __init__(self, queues: dict[str, list[RawMessage]], quorum: tuple[str, ...] = (), **kwargs: Any):
        stats = [QueueStats(name, ready=len(items)) for name, items in queues.items()]
        super().__init__(stats, kind="rabbitmq", **kwargs)
        self.queues = queues
        self.quorum = quorum

    def peek_messages(
        self, queue: str, limit: int, *, allow_quorum: bool = False
    ) -> tuple[list[RawMessage], str]:
        if queue not in self.queues:
            raise ReadRefused(f"not peeked: {queue} unknown", ReadRefusal.UNKNOWN_QUEUE, queue)
        if queue in self.quorum and not allow_quorum:
            # The reason is data: the message need not say "quorum".
            raise ReadRefused("not peeked: it reorders this queue", ReadRefusal.QUORUM_QUEUE, queue)
        return self.queues[queue][:limit], "requeued in place (fake)"


def scan(broker: Broker, **kwargs: Any) -> Report:
    options: dict[str, Any] = {"queues": ["celery"], "include_beat": False, **kwargs}
    return run_scan(broker=broker, new=NEW, old=None, now=NOW, **options)


def test_unread_queue_is_incomplete_never_ok_and_beat_entries_are_not_messages():
    """RabbitMQ without --peek: 15 messages wait unread, the 21 beat entries are no messages."""
    broker = Rabbit({"celery": messages(15, "notify")})
    report = scan(broker, include_beat=True, app=BEAT)
    assert report.scanned == 0 and report.beat_entries == 21
    assert report.beat_totals[Verdict.RUNS] == 21 and sum(report.totals.values()) == 0
    assert report.verdict == "incomplete" and report.unchecked_count == 15
    summary = report.incomplete_summary()
    assert summary is not None
    assert summary.startswith("15 of 15 waiting message(s) not checked (15 in queue:celery: rabbitmq")
    assert "pass --peek" in summary


def test_beyond_the_peek_limit_is_incomplete():
    broker = Rabbit({"celery": messages(260)})
    report = scan(broker, peek=PeekOptions(100))
    assert report.scanned == 100 and report.totals[Verdict.RUNS] == 100
    assert report.verdict == "incomplete"
    (unchecked,) = report.unchecked
    assert (unchecked.location, unchecked.count) == ("queue:celery", 160)
    assert "--peek-limit 100" in unchecked.reason and "at least 260" in unchecked.remedy
    assert report.incomplete_summary().startswith("160 of 260 waiting message(s) not checked")  # type: ignore[union-attr]
    assert report.notes[0] == "peeked 100 message(s) of queue celery: requeued in place (fake)"


def test_everything_peeked_is_complete():
    report = scan(Rabbit({"celery": messages(3)}), peek=PeekOptions(100))
    assert report.verdict == "ok" and report.unchecked == [] and report.incomplete_summary() is None


def test_unforced_quorum_queue_is_incomplete():
    broker = Rabbit({"celery": messages(2), "strict": messages(2)}, quorum=("strict",))
    report = scan(broker, queues=["celery", "strict"], peek=PeekOptions(100))
    assert report.scanned == 2
    (unchecked,) = report.unchecked
    assert (unchecked.location, unchecked.count) == ("queue:strict", 2)
    assert "--force" in unchecked.remedy and report.verdict == "incomplete"


def test_a_refusal_is_judged_by_its_reason_not_its_wording():
    """Only a QUORUM_QUEUE refusal suggests --force, whatever the broker's message says."""

    class Refusing(Rabbit):
        def peek_messages(
            self, queue: str, limit: int, *, allow_quorum: bool = False
        ) -> tuple[list[RawMessage], str]:
            raise ReadRefused("the quorum of admins said no", ReadRefusal.NO_PEEK, queue)

    (unchecked,) = scan(Refusing({"celery": messages(2)}), peek=PeekOptions(100)).unchecked
    assert unchecked.count == 2 and "--force" not in unchecked.remedy
    assert unchecked.reason == "the quorum of admins said no"


def test_notes_say_each_fact_once_however_many_queues():
    """7 queues peeked, 34 the app declares but the broker does not know: two lines, not 35,
    and never "queues read: none" when queues were peeked."""
    queues = {f"q{i}": messages(2) for i in range(7)}
    ghosts = [f"ghost{i:02}" for i in range(34)]
    report = scan(Rabbit(queues), queues=[*queues, *ghosts], peek=PeekOptions(100))
    assert report.notes == [
        "peeked 14 message(s) of 7 queues (q0, q1, q2, q3, q4 and 2 more): requeued in place (fake)",
        "34 queues (ghost00, ghost01, ghost02, ghost03, ghost04 and 29 more) not peeked: "
        "the broker does not know them",
    ]
    assert report.verdict == "ok" and report.scanned == 14


def test_a_breaking_message_wins_over_incomplete():
    broker = Rabbit({"celery": messages(5, "notify", [1]), "strict": messages(2)}, quorum=("strict",))
    report = scan(broker, queues=["celery", "strict"], peek=PeekOptions(100))
    assert report.totals[Verdict.FAILS] == 5 and report.incomplete
    assert report.verdict == "unsafe"


def test_delayed_delivery_queues_not_peeked_are_counted():
    delayed = DelayedStore(queues=("celery_delayed_27", "celery_delayed_3"), messages=4)
    report = scan(Rabbit({"celery": messages(1)}, delayed=delayed), peek=PeekOptions(100))
    (unchecked,) = report.unchecked
    assert unchecked.location.startswith("delayed:") and unchecked.count == 4


def test_tasks_held_by_silent_workers_are_unknown_where_the_broker_cannot_show_them():
    fleet = FakeFleet({"w1@h": {"reserved": [], "scheduled": []}, "w2@h": {}}, silent=["w2@h"])
    report = scan(
        Rabbit({"celery": messages(1)}), peek=PeekOptions(10), fleet=fleet, workers=["w1@h", "w2@h"]
    )
    (unchecked,) = report.unchecked
    assert unchecked.count is None and "w2@h" in unchecked.reason
    assert report.incomplete and report.unchecked_unknown
    assert "and an unknown number more" in report.incomplete_summary()  # type: ignore[operator]

    # The broker says whether it shows what workers hold, not whether its class overrides a method.
    rabbit = FakeBroker(kind="rabbitmq")  # overrides unacked_messages, shows_unacked is False
    rabbit.iter_pages = lambda queue, batch=1000: iter(())  # type: ignore[method-assign]
    report = scan(rabbit, fleet=fleet, workers=["w1@h", "w2@h"])
    assert report.verdict == "incomplete" and report.unchecked[0].location == "workers"

    # Redis shows what workers hold in its unacked hash: a silent worker hides nothing.
    redis = FakeBroker(kind="redis")
    redis.iter_pages = lambda queue, batch=1000: iter(())  # type: ignore[method-assign]
    report = scan(redis, fleet=fleet, workers=["w1@h", "w2@h"])
    assert report.verdict == "ok" and any("w2@h" in note for note in report.notes)


def test_celery_builtins_are_registered_on_every_worker():
    """django-celery-beat's default row runs celery.backend_cleanup: never 'discarded'."""
    judge = build_judge(NEW, None)
    report = Report(NOW, 10**6)
    rows = [
        _beat_item("beat-db:celery.backend_cleanup", "celery.backend_cleanup", [], {}),
        _beat_item("beat-db:bad cleanup", "celery.backend_cleanup", [1], {}),
    ]
    scan_app_beat(App({}), judge, report, django_rows=lambda: (rows, "2 rows"))
    assert report.beat_totals[Verdict.RUNS] == 1 and report.beat_totals[Verdict.FAILS] == 1
    assert report.beat_totals[Verdict.DISCARDED] == 0
    (reason,) = report.groups[("celery.backend_cleanup", Verdict.FAILS)].reasons
    assert "takes 0 positional arguments but 1 was given" in reason


def test_a_beat_entry_in_beat_schedule_and_in_django_celery_beat_counts_once():
    app = App({"nightly": {"task": "report", "schedule": 60, "args": (7,)}})
    rows = [
        _beat_item("beat-db:nightly", "report", [7], {}),  # copied by django-celery-beat
        _beat_item("beat-db:admin-made", "report", [], {"account": 1}),
        _beat_item("beat-db:celery.backend_cleanup", "celery.backend_cleanup", [], {}),
    ]
    report = Report(NOW, 10**6)
    scan_app_beat(app, build_judge(NEW, None), report, django_rows=lambda: (rows, "3 rows"))
    assert report.beat_entries == 3 and report.scanned == 0
    assert report.notes == [
        "3 django-celery-beat periodic task(s) checked (1 of them also in beat_schedule, counted once)"
    ]


def test_beat_entries_from_items_are_counted_apart_from_messages():
    report = Report(NOW, 10**6)
    call = TaskCall("report", (1,), {})
    item = Item("queue:celery", NO_HEADERS, 10, DecodedMessage("m", "report", (call,), None))
    beat = Item("beat:nightly", NO_HEADERS, None, DecodedMessage(None, "report", (call,), None))
    from deploykit.scan.engine import scan as judge_items

    judge_items([item, beat], build_judge(NEW, None), report)
    group = report.groups[("report", Verdict.RUNS)]
    assert (group.count, group.beat, report.scanned, report.beat_entries) == (1, 1, 1, 1)


def test_the_judge_pairs_renamed_parameters_from_the_manifests():
    """PARAM_RENAMED pairs user_mailer_id with mailing_profile_id: positional messages bind as before."""
    old = Manifest(
        tasks={"mail": Task("mail", (Parameter("user_mailer_id", POK), Parameter("subject", POK)))}
    )
    new = Manifest(
        tasks={"mail": Task("mail", (Parameter("mailing_profile_id", POK), Parameter("subject", POK)))}
    )
    judge = build_judge(new, old)
    positional = judge.call(TaskCall("mail", (7, "hi"), {}))
    keyword = judge.call(TaskCall("mail", (), {"user_mailer_id": 7, "subject": "hi"}))
    assert positional.verdict is Verdict.RUNS
    assert keyword.verdict is Verdict.FAILS


def test_django_celery_beat_database_error_is_one_line(monkeypatch: Any) -> None:
    """A database that is down: the note names the error's type and first line, not its whole text."""
    import django.apps

    from deploykit.scan.sources import django_beat_items

    class OperationalError(Exception):
        pass

    class Rows:
        def filter(self, **kwargs: Any) -> Rows:
            return self

        def values_list(self, *fields: str) -> list[Any]:
            raise OperationalError(
                'connection to server at "db" (10.0.0.5), port 5432 failed: Connection refused\n'
                "\tIs the server running on that host and accepting TCP/IP connections?\n"
                + "DETAIL: ...\n"
                * 30
            )

    class Registry:
        ready = True

        def is_installed(self, name: str) -> bool:
            return name == "django_celery_beat"

        def get_model(self, app: str, model: str) -> Any:
            return type("PeriodicTask", (), {"objects": Rows()})

    monkeypatch.setattr(django.apps, "apps", Registry())
    items, note = django_beat_items()
    assert items == []
    assert note == (
        'django-celery-beat rows not read: OperationalError: connection to server at "db" '
        "(10.0.0.5), port 5432 failed: Connection refused"
    )


def test_beat_schedule_judged_elsewhere_is_left_out_but_django_rows_are_not():
    """check --broker: the manifest rules judge beat_schedule; the scan adds only the rows that
    are not copies of it, so a failing entry is reported once."""
    app = App({"hourly": {"task": "notify", "schedule": 60, "args": (1,)}})  # fails: 1 of 2 args
    rows = [
        _beat_item("beat-db:hourly", "notify", [1], {}),  # django-celery-beat's copy
        _beat_item("beat-db:admin-made", "notify", [1, "sms"], {}),
    ]
    report = Report(NOW, 10**6)
    scan_app_beat(app, build_judge(NEW, None), report, django_rows=lambda: (rows, "2 rows"), schedule=False)
    assert report.beat_entries == 1 and report.beat_totals[Verdict.FAILS] == 0
    assert report.notes == [
        "1 django-celery-beat periodic task(s) checked (1 more are beat_schedule entries, judged with it)"
    ]
    report = scan(FakeBroker(kind="redis"), include_beat=True, app=app, beat_schedule=False)
    assert report.beat_entries == 0


class RoutingApp:
    """Just what ``app_queue_names`` reads of a Celery app: its queues, default queue and routes."""

    def __init__(self) -> None:
        self.amqp = type("Amqp", (), {"queues": {"declared": None}})()
        self.conf = type(
            "Conf", (), {"task_default_queue": "default", "task_routes": {"report": {"queue": "routed"}}}
        )()


ROUTED = Manifest(tasks={"notify": Task("notify", (), qualname="notify", queue="emails")})
DELAYED = DelayedStore(("celery_delayed_27", "celery_delayed_0"), messages=4)


def test_queues_given_are_the_queues_scanned_and_the_broker_is_not_asked():
    broker = FakeBroker(known=["celery"], delayed=DELAYED)
    assert queues_to_scan(broker, ROUTED, RoutingApp(), given=["b", "a"], peek=True) == ["b", "a"]
    assert broker.asked == []


def test_without_queues_every_queue_the_broker_the_code_or_the_app_names_is_scanned_once():
    broker = FakeBroker(known=["celery", "emails"], delayed=DELAYED)
    names = queues_to_scan(broker, ROUTED, RoutingApp())
    assert names == ["celery", "declared", "default", "emails", "routed"]
    assert broker.asked == []  # native delayed-delivery queues only with peek
    assert queues_to_scan(broker, ROUTED, None) == ["celery", "emails"]


def test_peek_adds_the_delayed_delivery_queues_that_hold_messages_after_the_others():
    broker = FakeBroker(known=["celery"], delayed=DELAYED)
    names = queues_to_scan(broker, NEW, None, peek=True)
    assert names == ["celery", "celery_delayed_0", "celery_delayed_27"]
    empty = FakeBroker(known=["celery"], delayed=DelayedStore(("celery_delayed_0",), messages=0))
    assert queues_to_scan(empty, NEW, None, peek=True) == ["celery"]
    assert queues_to_scan(FakeBroker(known=["celery"]), NEW, None, peek=True) == ["celery"]


def test_scan_waiting_asks_only_the_workers_online_and_says_what_it_cannot_detect():
    """The workers online (listed by the broker, answering the ping) are asked what they hold;
    without the old manifest, misbinding cannot be detected, and the last note says so."""
    held = [{"id": "t1", "type": "notify", "args": [1, "sms"], "kwargs": {}}]
    fleet = FakeFleet({"w1@h": {"reserved": held, "scheduled": []}, "w2@h": {}}, silent=["w2@h"])
    broker = Rabbit({"celery": messages(3, "notify")}, known=["celery"], mailboxes=["w1@h", "w2@h"])
    report = scan_waiting(broker, new=NEW, old=None, fleet=fleet, include_beat=False, peek=PeekOptions(10))
    assert ("gather", (["reserved", "scheduled"], ["w1@h"])) in fleet.calls
    assert report.scanned == 4
    assert report.totals[Verdict.FAILS] == 3 and report.totals[Verdict.RUNS] == 1
    assert report.notes[-1] == "no old manifest given (--manifest): reordered parameters cannot be detected"
    again = scan_waiting(broker, new=NEW, old=NEW, queues=["celery"], include_beat=False)
    assert again.scanned == 0 and again.unchecked_count == 3
    assert not any("no old manifest" in note for note in again.notes)
