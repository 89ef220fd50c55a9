"""Decoding stored task messages into the calls they will make — never unpickling anything.

A message becomes one or more :class:`TaskCall` (the task itself plus every callback, errback,
chain and chord member embedded in it, each as the task it will become). What cannot be decoded
becomes a :class:`Undecodable` with the reason: it is counted as undecidable, never as fine.

Supported: kombu's base64 body envelope, compression by MIME type in the ``compression`` header
(gzip/zlib, bz2, lzma, and zstd/brotli when installed), JSON, msgpack and YAML (``safe_load``)
when installed, protocol v1 and v2 bodies. Pickle payloads are never loaded: where the
``argsrepr``/``kwargsrepr`` headers parse as plain Python literals *syntax* (``ast.parse``,
nothing evaluated), the call's shape (positional count, keyword names) is taken from them.
"""

from __future__ import annotations

import ast
import base64
import binascii
import bz2
import lzma
import sys
import zlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import msgspec

from deploykit.brokers.base import RawMessage
from deploykit.messages import loads_json

#: Largest decompressed body we accept (a zip bomb in the broker must not take us down).
MAX_DECOMPRESSED = 64 * 1024 * 1024

PICKLE = "application/x-python-serialize"
JSON = "application/json"
MSGPACK = "application/x-msgpack"
YAML = "application/x-yaml"


class Placeholder:
    """Stands for an argument value known to exist but not decoded (pickle via argsrepr)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "…"


PLACEHOLDER = Placeholder()


class TaskCall(NamedTuple):
    """One task invocation a message will cause."""

    name: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    #: ``message`` for the task itself; ``callback``/``errback``/``chain``/``chord``/``group`` for
    #: embedded signatures.
    via: str = "message"
    #: Positional arguments Celery prepends at run time (the parent's result for a non-immutable
    #: callback or chain member). ``None`` for errbacks: Celery picks their calling convention from
    #: the errback's own signature, so only their registration is checked.
    prepended: int | None = 0
    #: ``body`` when decoded from the payload, ``argsrepr`` when only the header reprs were usable.
    source: str = "body"


class DecodedMessage(NamedTuple):
    task_id: str | None
    task_name: str | None
    calls: tuple[TaskCall, ...]
    content_type: str | None
    #: Set when embedded signatures could not be inspected (e.g. a pickle body read via argsrepr).
    note: str | None = None


class Undecodable(NamedTuple):
    task_id: str | None
    task_name: str | None
    reason: str
    content_type: str | None


def _optional_loader(content_type: str) -> Callable[[bytes], Any] | None:
    if content_type == MSGPACK:
        try:
            import msgpack
        except ImportError:
            return None
        return lambda data: msgpack.unpackb(data, raw=False, strict_map_key=False)
    if content_type == YAML:
        try:
            import yaml
        except ImportError:
            return None
        return lambda data: yaml.safe_load(data)
    return None


_DECOMPRESSORS: dict[str, Callable[[bytes], bytes]] = {}


def _bounded(factory: Callable[[], Any]) -> Callable[[bytes], bytes]:
    def run(data: bytes) -> bytes:
        decompressor = factory()
        out = decompressor.decompress(data, MAX_DECOMPRESSED + 1)
        if len(out) > MAX_DECOMPRESSED:
            raise ValueError(f"decompresses to more than {MAX_DECOMPRESSED} bytes")
        return bytes(out)

    return run


_DECOMPRESSORS["application/x-gzip"] = _bounded(zlib.decompressobj)
_DECOMPRESSORS["gzip"] = _DECOMPRESSORS["zlib"] = _DECOMPRESSORS["application/x-gzip"]
_DECOMPRESSORS["application/x-bz2"] = _bounded(bz2.BZ2Decompressor)
_DECOMPRESSORS["application/x-lzma"] = _bounded(lzma.LZMADecompressor)
_DECOMPRESSORS["bzip2"] = _DECOMPRESSORS["application/x-bz2"]
_DECOMPRESSORS["lzma"] = _DECOMPRESSORS["xz"] = _DECOMPRESSORS["application/x-lzma"]


def _decompress(data: bytes, content_type: str) -> bytes:
    decoder = _DECOMPRESSORS.get(content_type)
    if decoder is not None:
        return decoder(data)
    # zstd/brotli only when kombu has them registered (optional packages); still size-bounded.
    from kombu import compression

    try:
        raw = compression.get_decoder(content_type)
    except KeyError:
        raise ValueError(f"unknown compression {content_type!r}") from None
    out = raw(data)
    if len(out) > MAX_DECOMPRESSED:
        raise ValueError(f"decompresses to more than {MAX_DECOMPRESSED} bytes")
    return bytes(out)


def _shape_from_repr(text: Any, kind: str) -> Any:
    """Positional count / keyword names from an ``argsrepr``/``kwargsrepr`` header, by syntax only."""
    if not isinstance(text, str):
        raise ValueError(f"no usable {kind}repr header")
    try:
        node = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ValueError(f"{kind}repr is not parseable (truncated or custom repr)") from None
    if kind == "args":
        if isinstance(node, (ast.Tuple, ast.List)):
            if any(isinstance(e, ast.Starred) for e in node.elts):
                raise ValueError("argsrepr has a starred element")
            return tuple(PLACEHOLDER for _ in node.elts)
        raise ValueError("argsrepr is not a tuple or list")
    if isinstance(node, ast.Dict):
        keys = []
        for key in node.keys:
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                raise ValueError("kwargsrepr has a non-string key")
            keys.append(key.value)
        return dict.fromkeys(keys, PLACEHOLDER)
    raise ValueError("kwargsrepr is not a dict")


def _signature_calls(sig: Any, via: str, prepended: int | None, out: list[TaskCall], depth: int = 0) -> None:
    """Flatten an embedded signature (dict form) into the calls it will make."""
    if depth > 50 or not isinstance(sig, Mapping):
        raise ValueError(f"malformed embedded {via} signature")
    subtask_type = sig.get("subtask_type")
    kwargs = sig.get("kwargs") or {}
    options = sig.get("options") or {}
    immutable = bool(sig.get("immutable") or options.get("immutable"))
    if subtask_type in {"group"}:
        for child in kwargs.get("tasks") or ():
            _signature_calls(child, "group", prepended, out, depth + 1)
        return
    if subtask_type == "chain":
        tasks = kwargs.get("tasks") or ()
        for index, child in enumerate(tasks):
            _signature_calls(child, "chain", prepended if index == 0 else 1, out, depth + 1)
        return
    if subtask_type == "chord":
        for child in kwargs.get("header") or ():
            _signature_calls(child, "chord", prepended, out, depth + 1)
        if kwargs.get("body") is not None:
            _signature_calls(kwargs["body"], "chord", 1, out, depth + 1)
        return
    name = sig.get("task")
    if not isinstance(name, str):
        raise ValueError(f"embedded {via} signature without a task name")
    args = sig.get("args") or ()
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, Mapping):
        raise ValueError(f"embedded {via} signature {name} has malformed arguments")
    out.append(
        TaskCall(
            name,
            tuple(args),
            dict(kwargs),
            via=via,
            prepended=None if prepended is None else 0 if immutable else prepended,
        )
    )


def _embedded_calls(embed: Any) -> list[TaskCall]:
    calls: list[TaskCall] = []
    if not isinstance(embed, dict) or not (
        embed.get("callbacks") or embed.get("errbacks") or embed.get("chain") or embed.get("chord")
    ):
        return calls
    for sig in embed.get("callbacks") or ():
        _signature_calls(sig, "callback", 1, calls)
    for sig in embed.get("errbacks") or ():
        # Celery calls errbacks as (request, exc, traceback) or (task_id,) depending on the
        # errback's own signature (celery/backends/base.py _call_task_errbacks).
        _signature_calls(sig, "errback", None, calls)
    # ``chain`` is stored reversed: the last element runs next (celery/app/task.py, canvas.py).
    for sig in reversed(embed.get("chain") or ()):
        _signature_calls(sig, "chain", 1, calls)
    chord = embed.get("chord")
    if chord:
        _signature_calls(chord, "chord", 1, calls)
    return calls


class _Embed(msgspec.Struct, gc=False):
    """The third element of a protocol-v2 body: signatures Celery will call after the task."""

    callbacks: Any = None
    errbacks: Any = None
    chain: Any = None
    chord: Any = None


_V2Body = tuple[tuple[Any, ...], dict[str, Any], _Embed | None]
_decode_v2_body = msgspec.json.Decoder(_V2Body).decode


def _b64decode(text: Any) -> bytes:
    if _STRICT_BASE64:
        return binascii.a2b_base64(text, strict_mode=True)  # type: ignore[call-arg,unused-ignore]  # 3.11+
    return base64.b64decode(text, validate=True)


#: ``strict_mode`` (Python 3.11+) validates like ``b64decode(validate=True)`` at C speed.
_STRICT_BASE64 = sys.version_info >= (3, 11)


#: ``(task name, number of positional arguments, keyword names in order)``: all a call's verdict
#: depends on.
Shape = tuple[str, int, tuple[str, ...]]


def plain_call_shape(message: RawMessage) -> Shape | None:
    """The shape of the usual message — a protocol-v2 JSON body without embedded signatures —
    decoded straight into its structure (this runs once per message of a queue scan); ``None``
    for any other message: :func:`decode` takes those, and says what is wrong with them.
    """
    headers = message.headers
    name = headers.task
    if (
        type(name) is not str
        or message.body_encoding is not None
        or message.content_type != JSON
        or headers.compression
    ):
        return None
    try:
        args, kwargs, embed = _decode_v2_body(message.body)
    except (ValueError, msgspec.DecodeError):  # DecodeError is a ValueError from msgspec 0.21 on
        return None
    if embed is not None and (embed.callbacks or embed.errbacks or embed.chain or embed.chord):
        return None
    return name, len(args), tuple(kwargs)


def decode(message: RawMessage) -> DecodedMessage | Undecodable:
    """Decode a stored message into the task calls it will make.

    This runs once per waiting message (millions in a big queue): checks use concrete types
    (JSON gives dicts and lists) rather than ABCs, which cost several times more.
    """
    headers = message.headers
    task_id = headers.id
    if type(task_id) is not str:
        task_id = None
    task_name = headers.task
    if type(task_name) is not str:
        task_name = None
    content_type = message.content_type

    def fail(reason: str) -> Undecodable:
        return Undecodable(task_id, task_name, reason, content_type)

    if content_type == PICKLE:
        if task_name is None:
            return fail("pickle payload without a task header (never unpickled)")
        try:
            args = _shape_from_repr(headers.argsrepr, "args")
            kwargs = _shape_from_repr(headers.kwargsrepr, "kwargs")
        except ValueError as exc:
            return fail(f"pickle payload (never unpickled); {exc}")
        return DecodedMessage(
            task_id,
            task_name,
            (TaskCall(task_name, args, kwargs, source="argsrepr"),),
            content_type,
            note="pickle payload: checked from argsrepr/kwargsrepr; embedded callbacks not inspected",
        )

    body: Any = message.body
    try:
        if message.body_encoding == "base64":
            body = _b64decode(body)
        elif isinstance(body, str):
            body = body.encode("utf-8")
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        return fail(f"body is not valid base64: {exc}")
    compression = headers.compression
    if compression:
        try:
            body = _decompress(body, str(compression))
        except (ValueError, OSError, zlib.error, lzma.LZMAError, EOFError) as exc:
            return fail(f"cannot decompress ({compression}): {exc}")

    try:
        if content_type in (JSON, None, ""):
            payload = loads_json(body)
        else:
            loader = _optional_loader(content_type)
            if loader is None:
                return fail(f"content type {content_type!r} cannot be decoded here")
            payload = loader(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return fail(f"body is not valid {content_type or 'JSON'}: {str(exc)[:120]}")
    except Exception as exc:  # msgpack/yaml raise their own error types
        return fail(f"body is not valid {content_type}: {type(exc).__name__}")

    if task_name is None:
        # Protocol v1: everything is in a body dict (celery/app/amqp.py, AMQP.as_task_v1).
        if isinstance(payload, dict) and isinstance(payload.get("task"), str):
            task_name = payload["task"]
            task_id = payload.get("id") if isinstance(payload.get("id"), str) else task_id
            args, kwargs = payload.get("args") or (), payload.get("kwargs") or {}
            embed = {
                "callbacks": payload.get("callbacks"),
                "errbacks": payload.get("errbacks"),
                "chord": payload.get("chord"),
            }
        else:
            return fail("no task header and no protocol-v1 body")
    elif isinstance(payload, dict) and "args" in payload:
        # Hybrid: v2 headers with a v1 body (strategy.hybrid_to_proto2).
        args, kwargs = payload.get("args") or (), payload.get("kwargs") or {}
        embed = {
            "callbacks": payload.get("callbacks"),
            "errbacks": payload.get("errbacks"),
            "chord": payload.get("chord"),
        }
    elif isinstance(payload, (list, tuple)) and len(payload) == 3:
        args, kwargs, embed = payload
    else:
        return fail("body is not (args, kwargs, embed)")
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        return fail("args/kwargs have the wrong types")
    if content_type != JSON and any(not isinstance(key, str) for key in kwargs):
        return fail("kwargs has non-string keys")
    try:
        embedded = _embedded_calls(embed)
    except ValueError as exc:
        return fail(str(exc))
    call = TaskCall(task_name, tuple(args), kwargs)
    return DecodedMessage(task_id, task_name, (call, *embedded) if embedded else (call,), content_type)
