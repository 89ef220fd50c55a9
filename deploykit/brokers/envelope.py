"""kombu's virtual-transport envelope (Redis, filesystem…) read into a :class:`RawMessage`.

``Channel.prepare_message`` wraps every message as JSON: ``{"body": <base64 text>,
"content-type", "content-encoding", "headers": {...}, "properties": {"body_encoding": "base64",
"delivery_tag", "delivery_info", ...}}``; Redis keeps unacknowledged ones as
``[envelope, exchange, routing_key]`` in its ``unacked`` hash (``QoS.append``).

A queue scan reads millions of these, so the usual case is decoded by msgspec straight into
structs that name only the fields deploykit reads (the rest of the document is skipped, not
built) and the base64 body is decoded in the same pass. Anything that does not fit that shape —
corrupt JSON, a body that is not base64, headers that are not a table — takes the general path,
which keeps what it can and leaves the body as stored, so the scan reports why it is unreadable.
"""

from __future__ import annotations

from typing import Any

import msgspec

from deploykit.brokers.base import RawMessage
from deploykit.messages import NO_HEADERS, StoredHeaders, loads_json


class _Properties(msgspec.Struct, gc=False):
    body_encoding: Any = None
    delivery_tag: Any = None


class _Envelope(
    msgspec.Struct, gc=False, rename={"content_type": "content-type", "content_encoding": "content-encoding"}
):
    #: Base64 text in the document, decoded by msgspec; only kept when ``body_encoding`` says
    #: base64 (a plain-text body may happen to be valid base64 too).
    body: bytes
    headers: StoredHeaders | None = None
    properties: _Properties | None = None
    content_type: str | None = None
    content_encoding: str | None = None


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_decode_unacked = msgspec.json.Decoder(tuple[_Envelope, Any, Any]).decode


def parse_ready(queue: str, items: list[bytes]) -> list[RawMessage]:
    """A page of messages waiting in ``queue`` (:class:`~deploykit.brokers.base.StoredPage`'s parser)."""
    messages = []
    for data in items:
        try:
            message = _from_struct("ready", queue, data, _decode_envelope(data))
        except msgspec.DecodeError:  # also raised when the document does not fit the structs
            message = None
        messages.append(message or raw_from_envelope("ready", queue, data, _loads_or_none(data)))
    return messages


def parse_unacked(data: bytes) -> tuple[RawMessage, str, str]:
    """``(message, exchange, routing_key)`` of a Redis ``unacked`` entry. The message has no queue
    or delivery time yet: the caller knows them. An entry of another shape is a message without
    headers (the scan counts it as undecidable)."""
    try:
        envelope, exchange, routing_key = _decode_unacked(data)
        message = _from_struct("unacked", None, data, envelope)
    except msgspec.DecodeError:
        message = None
    if message is None:
        value = _loads_or_none(data)
        if not isinstance(value, list) or len(value) != 3:
            return raw_from_envelope("unacked", None, data, None), "", ""
        envelope, exchange, routing_key = value
        message = raw_from_envelope("unacked", None, data, envelope)
    return message, str(exchange or ""), str(routing_key or "")


def _from_struct(location: str, queue: str | None, data: bytes, envelope: _Envelope) -> RawMessage | None:
    """The usual envelope; ``None`` when its body is not base64 (the general path reads it)."""
    props = envelope.properties
    if props is None or props.body_encoding != "base64":
        return None
    tag = props.delivery_tag
    return RawMessage(
        location,
        queue,
        envelope.headers or NO_HEADERS,
        envelope.body,
        None,
        envelope.content_type,
        envelope.content_encoding,
        len(data),
        None if tag is None else str(tag),
    )


def _loads_or_none(data: bytes) -> Any:
    try:
        return loads_json(data)
    except (ValueError, RecursionError):
        return None


def raw_from_envelope(
    location: str, queue: str | None, data: bytes, envelope: Any, delivered_at: float | None = None
) -> RawMessage:
    """The general path: whatever can be read from a parsed envelope of any shape; a message that
    is not an envelope at all keeps its bytes and no headers. The body stays as stored."""
    if type(envelope) is not dict:
        return RawMessage(location, queue, NO_HEADERS, data, None, None, None, len(data), None, delivered_at)
    props = envelope.get("properties")
    if type(props) is not dict:
        props = {}
    headers = envelope.get("headers")
    tag = props.get("delivery_tag")
    return RawMessage(
        location,
        queue,
        StoredHeaders.from_mapping(headers) if type(headers) is dict else NO_HEADERS,
        envelope.get("body", ""),
        props.get("body_encoding"),
        envelope.get("content-type"),
        envelope.get("content-encoding"),
        len(data),
        None if tag is None else str(tag),
        delivered_at,
    )
