"""Decoding stored messages: every encoding Celery uses, and hostile input that must never crash
or be trusted. Nothing is ever unpickled."""

from __future__ import annotations

import base64
import json
import os
import pickle
import zlib
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploykit.brokers.base import RawMessage
from deploykit.messages import StoredHeaders
from deploykit.scan.decode import PLACEHOLDER, DecodedMessage, Undecodable, decode


def raw(
    body, *, headers=None, content_type="application/json", body_encoding="base64", encode=True
) -> RawMessage:
    if encode:
        data = json.dumps(body).encode() if content_type == "application/json" else body
        body = base64.b64encode(data).decode() if body_encoding == "base64" else data
    return RawMessage(
        location="ready",
        queue="celery",
        headers=StoredHeaders.from_mapping({"task": "t.add", "id": "id-1", **(headers or {})}),
        body=body,
        body_encoding=body_encoding,
        content_type=content_type,
        content_encoding="utf-8",
        size=len(body),
    )


EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def test_protocol_v2_json():
    result = decode(raw([[1, 2], {"z": 3}, EMBED]))
    assert isinstance(result, DecodedMessage)
    (call,) = result.calls
    assert (call.name, call.args, dict(call.kwargs), call.via) == ("t.add", (1, 2), {"z": 3}, "message")


def test_embedded_callbacks_chain_and_chord_become_calls():
    sig = lambda name, args=(), immutable=False: {  # noqa: E731
        "task": name,
        "args": list(args),
        "kwargs": {},
        "options": {},
        "subtask_type": None,
        "immutable": immutable,
    }
    embed = {
        "callbacks": [sig("t.notify", ["ops"])],
        "errbacks": [sig("t.on_error")],
        "chain": [sig("t.last"), sig("t.next", immutable=True)],
        "chord": {
            "task": "celery.chord_unlock",
            "subtask_type": "chord",
            "kwargs": {"header": [sig("t.part", [1])], "body": sig("t.sum")},
            "options": {},
        },
    }
    result = decode(raw([[1], {}, embed]))
    assert isinstance(result, DecodedMessage)
    calls = [(c.name, c.via, c.prepended) for c in result.calls]
    assert calls == [
        ("t.add", "message", 0),
        ("t.notify", "callback", 1),
        ("t.on_error", "errback", None),
        ("t.next", "chain", 0),
        ("t.last", "chain", 1),
        ("t.part", "chord", 1),
        ("t.sum", "chord", 1),
    ]


def test_protocol_v1_body():
    message = raw(
        {"task": "t.old", "id": "v1", "args": [1], "kwargs": {"a": 1}}, headers={"task": None, "id": None}
    )
    result = decode(message)
    assert isinstance(result, DecodedMessage)
    assert result.task_name == "t.old" and result.calls[0].args == (1,)


def test_compressed_body():
    data = zlib.compress(json.dumps([[1, 2], {}, EMBED]).encode())
    message = raw(
        data,
        headers={"compression": "application/x-gzip"},
        content_type="application/json",
        encode=False,
        body_encoding="base64",
    )
    message = msgspec.structs.replace(message, body=base64.b64encode(data).decode())
    result = decode(message)
    assert isinstance(result, DecodedMessage) and result.calls[0].args == (1, 2)


def test_msgpack_and_yaml():
    msgpack = pytest.importorskip("msgpack")
    yaml = pytest.importorskip("yaml")
    packed = raw(
        base64.b64encode(msgpack.packb([[1], {"k": 2}, EMBED])).decode(),
        content_type="application/x-msgpack",
        encode=False,
    )
    assert decode(packed).calls[0].kwargs == {"k": 2}
    doc = raw(
        base64.b64encode(yaml.safe_dump([[1], {}, EMBED]).encode()).decode(),
        content_type="application/x-yaml",
        encode=False,
    )
    assert decode(doc).calls[0].args == (1,)
    evil = raw(
        base64.b64encode(b"!!python/object/apply:os.system ['true']").decode(),
        content_type="application/x-yaml",
        encode=False,
    )
    assert isinstance(decode(evil), Undecodable)


class _Boom:
    """Unpickling this would create a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(((_Boom(str(marker)),), {}, EMBED))
    message = raw(
        base64.b64encode(payload).decode(),
        content_type="application/x-python-serialize",
        encode=False,
        headers={"argsrepr": "(<Boom object>,)", "kwargsrepr": "{}"},
    )
    result = decode(message)
    assert isinstance(result, Undecodable) and "never unpickled" in result.reason
    ok = raw(
        base64.b64encode(payload).decode(),
        content_type="application/x-python-serialize",
        encode=False,
        headers={"argsrepr": "(1, 'x', datetime.datetime(2026, 1, 1))", "kwargsrepr": "{'flag': True}"},
    )
    result = decode(ok)
    assert isinstance(result, DecodedMessage)
    assert result.calls[0].args == (PLACEHOLDER,) * 3 and list(result.calls[0].kwargs) == ["flag"]
    assert result.calls[0].source == "argsrepr"
    assert not marker.exists()
    assert not os.path.exists(marker)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (raw("%%% not base64 %%%", encode=False), "not valid base64"),
        (raw(base64.b64encode(b"{not json").decode(), encode=False), "not valid application/json"),
        (raw(base64.b64encode(b"\xff\xfe\x00bad utf8").decode(), encode=False), "not valid"),
        (raw([1, 2]), "not (args, kwargs, embed)"),
        (raw([[1], ["not", "a", "dict"], {}]), "wrong types"),
        (
            raw(base64.b64encode(b"x").decode(), encode=False, content_type="application/x-unknown"),
            "cannot be decoded",
        ),
        (
            raw(base64.b64encode(b"x").decode(), encode=False, headers={"compression": "application/x-nope"}),
            "cannot decompress",
        ),
        (raw({"no": "task"}, headers={"task": None}), "no task header"),
        (raw([[1], {}, {"callbacks": [{"args": []}]}]), "without a task name"),
    ],
)
def test_hostile_input_is_undecidable_never_a_crash(message, reason):
    result = decode(message)
    assert isinstance(result, Undecodable)
    assert reason in result.reason


def test_zip_bomb_is_refused():
    bomb = zlib.compress(b"0" * (70 * 1024 * 1024))
    message = raw(
        base64.b64encode(bomb).decode(), encode=False, headers={"compression": "application/x-gzip"}
    )
    result = decode(message)
    assert isinstance(result, Undecodable) and "more than" in result.reason


def test_twenty_megabyte_message_decodes():
    big = "x" * (20 * 1024 * 1024)
    result = decode(raw([[big], {}, EMBED]))
    assert isinstance(result, DecodedMessage) and len(result.calls[0].args[0]) == len(big)


@settings(max_examples=300, deadline=None)
@given(
    body=st.one_of(st.binary(max_size=200), st.text(max_size=200)),
    content_type=st.sampled_from(
        [
            "application/json",
            "application/x-msgpack",
            "application/x-yaml",
            "application/x-python-serialize",
            None,
            "text/plain",
        ]
    ),
    encoding=st.sampled_from(["base64", None]),
    headers=st.dictionaries(
        st.sampled_from(["task", "id", "argsrepr", "kwargsrepr", "compression"]),
        st.one_of(st.none(), st.text(max_size=30), st.integers()),
    ),
)
def test_any_bytes_decode_or_are_undecidable(body, content_type, encoding, headers):
    message = RawMessage(
        location="ready",
        queue="q",
        headers=StoredHeaders.from_mapping(headers),
        body=body,
        body_encoding=encoding,
        content_type=content_type,
        content_encoding=None,
        size=10,
    )
    assert isinstance(decode(message), (DecodedMessage, Undecodable))
