"""``deploykit builds``' core (:mod:`deploykit.builds`) on fakes: counts by build and location,
states, the unstamped and unknown rows, unread queues, peeking, the registry."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from deploykit.brokers.base import DelayedStore, QueueStats, RawMessage
from deploykit.builds import ACTIVE, DRAINED, DRAINING, BuildRow, BuildsView, collect_builds
from deploykit.errors import UsageError
from deploykit.inspection import collect_fleet
from deploykit.messages import StoredHeaders
from deploykit.registry import RegistryEntry
from deploykit.scan.run import PeekOptions
from tests.fakes import FakeBroker, FakeFleet

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def envelope(build: Any = None, *, eta: datetime | None = None, task_id: str = "t") -> bytes:
    """A message as kombu's Redis transport stores it (``Channel.prepare_message``)."""
    headers: dict[str, Any] = {"id": task_id, "task": "proj.add", "eta": eta.isoformat() if eta else None}
    if build is not None:
        headers["deploykit_build"] = build
    body = base64.b64encode(json.dumps([[1, 2], {}, {}]).encode()).decode()
    return json.dumps(
        {
            "body": body,
            "content-type": "application/json",
            "content-encoding": "utf-8",
            "headers": headers,
            "properties": {"body_encoding": "base64", "delivery_tag": task_id, "priority": 0},
        }
    ).encode()


def unacked(task_id: str, build: str | None, eta: datetime | None = None) -> RawMessage:
    headers = StoredHeaders(
        id=task_id, task="proj.add", eta=eta.isoformat() if eta else None, deploykit_build=build
    )
    return RawMessage("unacked", "celery", headers, b"", None, None, None, 0, delivery_tag=task_id)


def worker(
    build: str | None, *, scheduled: Sequence[tuple[str, datetime]] = (), reserved: Sequence[str] = ()
) -> dict[str, Any]:
    def request(task_id: str) -> dict[str, Any]:
        return {"id": task_id, "name": "proj.add", "delivery_info": {"routing_key": "celery"}}

    return {
        "stats": {"pid": 1, "pool": {}, **({"deploykit": {"build": build}} if build else {})},
        "active_queues": [{"name": "celery"}],
        "active": [],
        "reserved": [request(t) for t in reserved],
        "scheduled": [{"eta": eta.isoformat(), "priority": 0, "request": request(t)} for t, eta in scheduled],
        "report": {"ok": "celery:5.7.0"},
    }


def entries(*builds: str, broken: Sequence[str] = ()) -> Any:
    def listed() -> list[RegistryEntry]:
        rows = [RegistryEntry(b, 1.0, 2, 10) for b in builds]
        return rows + [RegistryEntry(b, None, None, 1, "corrupt") for b in broken]

    return listed


def run(broker: FakeBroker, fleet: FakeFleet, **kwargs: Any) -> BuildsView:
    kwargs.setdefault("queues", sorted(broker.ready or ()))
    return collect_builds(broker, collect_fleet(fleet, broker), **kwargs)


def by_build(view: BuildsView) -> dict[str | None, BuildRow]:
    return {row.build if row.kind == "build" else row.kind: row for row in view.rows}


def test_redis_counts_every_message_by_build_location_and_worker() -> None:
    later, latest = NOW + timedelta(hours=1), NOW + timedelta(hours=5)
    fake = FakeBroker(
        ready={
            "celery": [envelope("A"), envelope("A", eta=later), envelope("B"), envelope(), envelope()],
            "reports": [envelope("B", eta=latest)] * 3,
        },
        unacked=[
            unacked("held-a", "A", latest),
            unacked("held-b", "B"),
            unacked("orphan", "C"),
            unacked("u", None),
        ],
        mailboxes=["a@h", "b@h"],
    )
    fleet = FakeFleet(
        {"a@h": worker("A", scheduled=[("held-a", latest)]), "b@h": worker("B", reserved=["held-b"])}
    )
    view = run(fake, fleet, registry=entries("A", "B", "old"), registry_location="dir", app=None)

    rows = by_build(view)
    assert [(r.build, r.kind, r.state) for r in view.rows] == [
        ("A", "build", ACTIVE),
        ("B", "build", ACTIVE),
        ("C", "build", DRAINING),
        ("old", "build", DRAINED),
        (None, "unstamped", DRAINING),
    ]
    a, b, c = rows["A"], rows["B"], rows["C"]
    assert a.workers == ("a@h",) and b.workers == ("b@h",) and c.workers == ()
    assert dict(a.messages.queues) == {"celery": 2} and dict(a.messages.held) == {"a@h": 1}
    assert a.messages.unacked == 0 and a.messages.total == 3
    assert dict(b.messages.queues) == {"celery": 1, "reports": 3} and dict(b.messages.held) == {"b@h": 1}
    assert c.messages.unacked == 1 and c.messages.total == 1  # its worker is gone: held by no one
    assert (
        dict(rows["unstamped"].messages.queues) == {"celery": 2} and rows["unstamped"].messages.unacked == 1
    )
    assert a.latest_eta == latest and b.latest_eta == latest and c.latest_eta is None
    assert (a.manifest, c.manifest, rows["old"].manifest) == (True, False, True)
    assert rows["unstamped"].manifest is None
    assert view.read == 12 and not view.incomplete and view.queues == ("celery", "reports")
    assert view.registry == "dir"
    assert any("beat entries not counted" in note for note in view.notes)


def test_a_build_without_workers_whose_messages_wait_is_draining_and_nothing_left_is_drained() -> None:
    fake = FakeBroker(ready={"celery": [envelope("A")]}, mailboxes=["b@h"])
    view = run(fake, FakeFleet({"b@h": worker("B")}), registry=entries("A", "B", "Z"))
    states = {row.build: row.state for row in view.rows}
    assert states == {"B": ACTIVE, "A": DRAINING, "Z": DRAINED}


def test_messages_spread_over_pages_are_all_counted() -> None:
    fake = FakeBroker(ready={"celery": [envelope("A")] * 2500 + [envelope()] * 1001})
    view = run(fake, FakeFleet({}))
    rows = by_build(view)
    assert rows["A"].messages.queues == {"celery": 2500}
    assert rows["unstamped"].messages.queues == {"celery": 1001}
    assert view.read == 3501


@pytest.mark.parametrize("stamp", ["bad\nid", "x" * 200, 42, ["A"], ""])
def test_an_invalid_stamp_counts_as_unstamped_and_says_so(stamp: Any) -> None:
    fake = FakeBroker(ready={"celery": [envelope(stamp), envelope("A")]})
    view = run(fake, FakeFleet({}))
    rows = by_build(view)
    assert rows["unstamped"].messages.queues == {"celery": 1} and rows["A"].messages.queues == {"celery": 1}
    assert any("not a valid build id: counted as unstamped" in note for note in view.notes)


def test_an_envelope_the_fast_reader_refuses_is_read_the_general_way() -> None:
    odd = json.loads(envelope("A"))
    odd["properties"] = "not a table"  # the header-only struct refuses it; the general path reads it
    broken = b"{not json"
    fake = FakeBroker(ready={"celery": [json.dumps(odd).encode(), broken]})
    rows = by_build(run(fake, FakeFleet({})))
    assert rows["A"].messages.queues == {"celery": 1}
    assert rows["unstamped"].messages.queues == {"celery": 1}


def test_rabbitmq_without_peek_reports_queue_totals_unread() -> None:
    fake = FakeBroker(
        [QueueStats("celery", ready=7), QueueStats("empty", ready=0)],
        kind="rabbitmq",
        mailboxes=["a@h"],
        delayed=DelayedStore(("celery_delayed_0", "celery_delayed_1"), 3),
    )
    fleet = FakeFleet({"a@h": worker("A", scheduled=[("e1", NOW)], reserved=["r1"])})
    view = run(fake, fleet, queues=["celery", "empty"])
    assert view.incomplete and view.read == 0
    assert [(u.location, u.messages) for u in view.unread] == [
        ("queue:celery", 7),
        ("delayed:celery_delayed_0…", 3),
    ]
    assert "--peek" in view.unread[0].remedy
    rows = by_build(view)
    # Held tasks: the replies carry no headers, so their build is unknown (and said so).
    assert rows["unknown"].state is None and rows["unknown"].messages.held == {"a@h": 2}
    assert rows["unknown"].latest_eta == NOW
    assert rows["A"].state == ACTIVE and rows["A"].messages.total == 0
    assert any("'unknown build'" in note for note in view.notes)


def test_rabbitmq_with_peek_counts_what_it_sampled_and_the_rest_is_unread() -> None:
    def peeked(build: str | None) -> RawMessage:
        return RawMessage("ready", "celery", StoredHeaders(deploykit_build=build), b"", None, None, None, 0)

    fake = FakeBroker(
        [QueueStats("celery", ready=5), QueueStats("celery_delayed_2", ready=1)],
        kind="rabbitmq",
        peekable={"celery": [peeked("A"), peeked("B"), peeked(None)], "celery_delayed_2": [peeked("A")]},
        delayed=DelayedStore(("celery_delayed_2",), 1),
    )
    view = run(fake, FakeFleet({}), queues=["celery", "celery_delayed_2", "gone"], peek=PeekOptions(2))
    rows = by_build(view)
    assert rows["A"].messages.queues == {"celery": 1} and rows["A"].messages.delayed == 1
    assert rows["B"].messages.queues == {"celery": 1} and "unstamped" not in rows
    assert [(u.location, u.messages, u.reason) for u in view.unread] == [
        ("queue:celery", 3, "beyond --peek-limit 2")
    ]
    # The scan's own note: one line per effect, the queues it was done to.
    assert any(
        note.startswith("peeked 3 message(s) of 2 queues (celery, celery_delayed_2)") for note in view.notes
    )


def test_workers_that_did_not_answer_leave_held_tasks_unread_on_rabbitmq() -> None:
    fake = FakeBroker(kind="rabbitmq", mailboxes=["a@h", "b@h"])
    fleet = FakeFleet({"a@h": worker("A"), "b@h": {"stats": {"pid": 2}}})
    view = run(fake, fleet, queues=[])
    assert [u.location for u in view.unread] == ["workers"] and view.incomplete
    assert by_build(view)["unknown"].workers == ("b@h",)  # its build could not be read


def test_unstamped_workers_are_the_unstamped_row() -> None:
    fake = FakeBroker(ready={"celery": []}, mailboxes=["p@h"])
    view = run(fake, FakeFleet({"p@h": worker(None)}))
    (row,) = view.rows
    assert (row.kind, row.state, row.workers, row.messages.total) == ("unstamped", ACTIVE, ("p@h",), 0)


def test_beat_entries_of_the_app_count_as_its_build() -> None:
    class Conf:
        beat_schedule = {"a": {"task": "proj.add"}, "b": {"task": "proj.add"}}

    class App:
        conf = Conf()

    fake = FakeBroker(ready={"celery": []})
    view = run(fake, FakeFleet({}), app=App(), app_build="B")
    (row,) = view.rows
    assert (row.build, row.messages.beat, row.state) == ("B", 2, DRAINING)
    assert any("2 beat entries of the app given with -A, counted as build B" in n for n in view.notes)


def test_a_beat_schedule_that_raises_is_a_note() -> None:
    class App:
        @property
        def conf(self) -> Any:
            raise RuntimeError("settings broken")

    view = run(FakeBroker(ready={"celery": []}), FakeFleet({}), app=App())
    assert view.rows == () and any("reading beat_schedule failed" in n for n in view.notes)


def test_a_registry_that_cannot_be_read_leaves_manifests_unknown() -> None:
    def failing() -> list[RegistryEntry]:
        raise UsageError("registry entry is corrupt")

    fake = FakeBroker(ready={"celery": [envelope("A")]})
    view = run(fake, FakeFleet({}), registry=failing, registry_location="somewhere")
    assert by_build(view)["A"].manifest is None and view.registry is None
    assert "manifest registry not read: registry entry is corrupt" in view.notes


def test_a_corrupt_registry_entry_is_no_known_manifest() -> None:
    view = run(FakeBroker(ready={"celery": []}), FakeFleet({}), registry=entries("A", broken=["X"]))
    assert {row.build: (row.state, row.manifest) for row in view.rows} == {
        "A": (DRAINED, True),
        "X": (DRAINED, False),
    }


def golden_view() -> BuildsView:
    """Every kind of row, unread queues and notes: the golden ``deploykit.builds/1`` document's source."""

    class Conf:
        beat_schedule = {"nightly": {"task": "proj.add"}}

    class App:
        conf = Conf()

    def peeked(build: str | None, eta: datetime | None = None) -> RawMessage:
        headers = StoredHeaders(deploykit_build=build, eta=eta.isoformat() if eta else None)
        return RawMessage("ready", "celery", headers, b"", None, None, None, 0)

    fake = FakeBroker(
        [
            QueueStats("celery", ready=4),
            QueueStats("celery_delayed_1", ready=1),
            QueueStats("reports", ready=9),
        ],
        kind="rabbitmq",
        mailboxes=["a@h", "p@h"],
        peekable={
            "celery": [peeked("A", NOW), peeked("old"), peeked(None)],
            "celery_delayed_1": [peeked("old", NOW + timedelta(days=1))],
        },
    )
    fleet = FakeFleet({"a@h": worker("A", scheduled=[("e1", NOW)]), "p@h": worker(None)})
    return collect_builds(
        fake,
        collect_fleet(fleet, fake),
        queues=["celery", "celery_delayed_1"],
        registry=entries("A", "old", "gone"),
        registry_location="redis keys 'deploykit:manifest:*'",
        app=App(),
        app_build="A",
        peek=PeekOptions(3),
    )


def test_the_golden_view_has_every_kind_of_row() -> None:
    view = golden_view()
    assert [(row.build, row.kind, row.state) for row in view.rows] == [
        ("A", "build", ACTIVE),
        ("old", "build", DRAINING),
        ("gone", "build", DRAINED),
        (None, "unstamped", ACTIVE),
        (None, "unknown", None),
    ]
    assert by_build(view)["old"].messages.delayed == 1 and by_build(view)["A"].messages.beat == 1
    assert [u.location for u in view.unread] == ["queue:celery"]


@pytest.mark.parametrize(("kind", "unread"), [("redis", []), ("rabbitmq", ["workers"])])
def test_a_worker_whose_mailbox_is_listed_but_does_not_answer_is_said(kind: str, unread: list[str]) -> None:
    fake = FakeBroker(kind=kind, mailboxes=["a@h", "gone@h"], ready={} if kind == "redis" else None)
    view = run(fake, FakeFleet({"a@h": worker("A"), "gone@h": worker("B")}, silent=["gone@h"]), queues=[])
    assert [u.location for u in view.unread] == unread
    assert any("gone@h: their builds are unknown" in note for note in view.notes)
    assert [row.build for row in view.rows] == ["A"]
