"""The scan's fast paths agree with its general ones.

A queue scan reads the usual message through typed decoders (``brokers/envelope.py``: envelope
straight into structs, base64 body decoded in the same pass; ``plain_call_shape``: the body straight
into its shape) and everything else through the general path. Whatever the message, both must
come to the same verdict; a message the fast path cannot read must never come out as fine.
"""

from __future__ import annotations

import base64
import json
import threading
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploykit.brokers.base import StoredPage
from deploykit.brokers.envelope import parse_ready, parse_unacked, raw_from_envelope
from deploykit.errors import Unavailable
from deploykit.messages import NO_HEADERS, loads_json
from deploykit.scan.decode import Undecodable, decode, plain_call_shape
from deploykit.scan.engine import Judge, Outcome, Report, Verdict, judge_raw
from deploykit.scan.run import read_ahead
from tests.scan.test_engine import NEW, OLD

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def envelope(payload: Any, *, task: Any = "notify", encode: bool = True, **overrides: Any) -> bytes:
    """A kombu virtual-transport envelope as Redis stores it; ``overrides`` replace its fields."""
    payload = json.dumps(payload).encode() if encode else payload
    document: dict[str, Any] = {
        "body": base64.b64encode(payload).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": task, "id": "id-1", "eta": None, "retries": 0},
        "properties": {"body_encoding": "base64", "delivery_tag": "tag-1", "priority": 0},
    }
    document.update(overrides)
    return json.dumps(document).encode()


def general(data: bytes) -> Outcome:
    """The verdict through the general path only: stdlib JSON, decode(), judge.message()."""
    message = raw_from_envelope("ready", "celery", data, _loads(data))
    decoded = decode(message)
    if isinstance(decoded, Undecodable):
        return Outcome(Verdict.UNDECIDABLE, decoded.reason)
    return Judge(NEW, OLD).message(decoded)


def fast(data: bytes) -> Report:
    report = Report(NOW, 10**6)
    judge_raw(parse_ready("celery", [data]), "queue:celery", Judge(NEW, OLD), report)
    return report


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def verdict_of(report: Report) -> tuple[Verdict, str | None]:
    ((_, verdict),) = report.groups
    (group,) = report.groups.values()
    reasons = list(group.reasons)
    return verdict, reasons[0] if reasons else None


CASES = {
    "runs": envelope([["u1", "sms"], {}, EMBED]),
    "fails": envelope([["u1"], {}, EMBED]),
    "misbound": envelope([["a", "b", 1], {}, EMBED], task="bank.transfer"),
    "discarded": envelope([[1], {}, EMBED], task="legacy"),
    "keywords": envelope([[], {"user": 1, "channel": "x"}, EMBED]),
    "unexpected keyword": envelope([["u1", "sms"], {"urgent": True}, EMBED]),
    "no embed element": envelope([["u1", "sms"], {}, None]),
    "callback that fails": envelope(
        [["u1", "sms"], {}, {**EMBED, "callbacks": [{"task": "notify", "args": [], "kwargs": {}}]}]
    ),
    "NaN argument (stdlib JSON writes it)": envelope(b'[[NaN, "sms"], {}, null]', encode=False),
    "protocol v1 body": envelope(
        {"task": "notify", "id": "v1", "args": ["u1", "sms"], "kwargs": {}}, task=None
    ),
    "hybrid body": envelope({"args": ["u1"], "kwargs": {}}),
    "corrupt body": envelope(b"[[1, 2], {", encode=False),
    "args not a list": envelope([{"a": 1}, {}, EMBED]),
    "task header not a string": envelope([["u1", "sms"], {}, EMBED], task=7),
    "headers not a table": envelope([["u1", "sms"], {}, EMBED], headers=["task", "notify"]),
    "body not base64": envelope([["u1"], {}, EMBED], body="%%% not base64 %%%"),
    "plain-text body": envelope(
        [["u1"], {}, EMBED],
        body=json.dumps([["u1"], {}, EMBED]),
        properties={"delivery_tag": "t"},
    ),
    "pickle": envelope([["u1"], {}, EMBED], **{"content-type": "application/x-python-serialize"}),
    "gzip": envelope([["u1"], {}, EMBED], headers={"task": "notify", "compression": "application/x-gzip"}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_and_general_paths_agree(name: str) -> None:
    data = CASES[name]
    expected = general(data)
    verdict, reason = verdict_of(fast(data))
    assert (verdict, reason) == (expected.verdict, expected.reason)


def test_the_cases_cover_every_verdict() -> None:
    assert {general(data).verdict for data in CASES.values()} == set(Verdict)


def test_a_body_that_is_not_base64_is_kept_as_stored() -> None:
    (message,) = parse_ready("celery", [CASES["plain-text body"]])
    assert message.body_encoding is None and message.body == json.dumps([["u1"], {}, EMBED])
    (message,) = parse_ready("celery", [CASES["body not base64"]])
    assert (message.body_encoding, message.body) == ("base64", "%%% not base64 %%%")


def test_the_usual_envelope_is_read_fully() -> None:
    (message,) = parse_ready("celery", [CASES["runs"]])
    assert (message.headers.task, message.headers.id, message.headers.retries) == ("notify", "id-1", 0)
    assert (message.body_encoding, message.content_type, message.delivery_tag) == (
        None,
        "application/json",
        "tag-1",
    )
    assert loads_json(message.body) == [["u1", "sms"], {}, EMBED]
    assert message.size == len(CASES["runs"])


@pytest.mark.parametrize("data", [b"\x80not json", b"[1, 2]", b"{}", b"null", b'"text"'])
def test_anything_else_is_a_message_without_headers(data: bytes) -> None:
    (message,) = parse_ready("celery", [data])
    assert message.headers == NO_HEADERS and message.size == len(data)
    assert verdict_of(fast(data))[0] is Verdict.UNDECIDABLE


def test_unacked_entries() -> None:
    data = CASES["runs"]
    entry = b"[" + data + b', "celery", "celery"]'
    message, exchange, routing_key = parse_unacked(entry)
    assert (message.location, message.headers.task, exchange, routing_key) == (
        "unacked",
        "notify",
        "celery",
        "celery",
    )
    message, exchange, routing_key = parse_unacked(b"[" + CASES["plain-text body"] + b", null, 5]")
    assert (message.body_encoding, exchange, routing_key) == (None, "", "5")
    message, exchange, _ = parse_unacked(b"not an entry")
    assert (message.headers, message.location, exchange) == (NO_HEADERS, "unacked", "")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",))),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    task=st.sampled_from(["notify", "bank.transfer", "report", "legacy", "gone"]),
    args=st.lists(json_values, max_size=4),
    kwargs=st.dictionaries(st.sampled_from(["user", "channel", "period", "x", "amount"]), json_values),
)
def test_any_plain_call_gets_the_general_verdict(task: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    data = envelope([args, kwargs, EMBED], task=task)
    (message,) = parse_ready("celery", [data])
    assert plain_call_shape(message) == (task, len(args), tuple(kwargs))
    expected = general(data)
    assert verdict_of(fast(data)) == (expected.verdict, expected.reason)


def pages(count: int, *, fail_after: int | None = None) -> Any:
    for index in range(count):
        if index == fail_after:
            raise Unavailable("broker went away")
        yield StoredPage("celery", [CASES["runs"]], parse_ready)


def test_read_ahead_yields_every_page_in_order() -> None:
    seen = list(read_ahead(iter(StoredPage(str(i), [], parse_ready) for i in range(50))))
    assert [page.queue for page in seen] == [str(i) for i in range(50)]


def test_read_ahead_raises_the_readers_error_in_the_caller() -> None:
    got = []
    with pytest.raises(Unavailable, match="broker went away"):
        for page in read_ahead(pages(10, fail_after=3)):
            got.append(page)
    assert len(got) == 3


def test_read_ahead_stops_its_reader_when_the_caller_stops() -> None:
    before = threading.active_count()
    reader = read_ahead(pages(1000))
    next(reader)
    reader.close()
    assert threading.active_count() == before


# --- stamped messages: the old side is the manifest of the message's build --------------------


def _builds_judge() -> Judge:
    """A judge whose stamped messages of build ``old`` are judged against OLD, of ``bad`` are
    undecidable (an unusable registry entry), of any other build (and unstamped) without an old
    side."""
    from deploykit.errors import UsageError
    from deploykit.scan.engine import OldBuilds

    def load(build: str) -> Judge | None:
        if build == "bad":
            raise UsageError("registry entry of build 'bad' is corrupt (not JSON)")
        return Judge(NEW, OLD) if build == "old" else None

    return Judge(NEW, builds=OldBuilds(load))


def stamped_envelope(payload: Any, build: Any, task: str = "notify") -> bytes:
    headers = {"lang": "py", "task": task, "id": "id-1", "eta": None, "retries": 0}
    if build is not None:
        headers["deploykit_build"] = build
    return envelope(payload, task=task, headers=headers)


def general_stamped(data: bytes, judge: Judge) -> Outcome:
    """The general path for a stamped message: decode(), then the judge of its build."""
    message = raw_from_envelope("ready", "celery", data, _loads(data))
    by = judge.for_build(message.headers.deploykit_build)
    decoded = decode(message)
    if isinstance(decoded, Undecodable):
        return Outcome(Verdict.UNDECIDABLE, decoded.reason)
    return by.message(decoded)


BUILDS = [None, "old", "other", "bad", 7]


@settings(max_examples=300, deadline=None)
@given(
    build=st.sampled_from(BUILDS),
    task=st.sampled_from(["notify", "bank.transfer", "report", "legacy"]),
    args=st.lists(json_values, max_size=4),
    kwargs=st.dictionaries(st.sampled_from(["user", "channel", "period", "amount"]), json_values),
)
def test_any_stamped_plain_call_gets_the_general_verdict_of_its_build(
    build: Any, task: str, args: list[Any], kwargs: dict[str, Any]
) -> None:
    data = stamped_envelope([args, kwargs, EMBED], build, task)
    expected = general_stamped(data, _builds_judge())
    report = Report(NOW, 10**6)
    judge_raw(parse_ready("celery", [data]), "queue:celery", _builds_judge(), report)
    assert verdict_of(report) == (expected.verdict, expected.reason)


def test_the_shape_cache_is_keyed_by_build() -> None:
    """One shape, three builds, one scan: each build's verdict, whatever was cached first."""
    shapes = [stamped_envelope([["a", "b", 1], {}, EMBED], build, "bank.transfer") for build in BUILDS]
    judge = _builds_judge()
    report = Report(NOW, 10**6)
    judge_raw(parse_ready("celery", shapes * 3), "queue:celery", judge, report)
    for data in shapes:
        expected = general_stamped(data, _builds_judge())
        single = Report(NOW, 10**6)
        judge_raw(parse_ready("celery", [data]), "queue:celery", _builds_judge(), single)
        assert verdict_of(single) == (expected.verdict, expected.reason)
    assert {v: n for v, n in report.totals.items() if n} == {
        Verdict.RUNS: 9,  # unstamped, "other" (no manifest), 7 (not a build id): no old side
        Verdict.MISBOUND: 3,  # "old": against OLD
        Verdict.UNDECIDABLE: 3,  # "bad": its registry entry is corrupt
    }
    assert judge.builds is not None and judge.builds.stamped == 12 and judge.builds.unknown == 6
