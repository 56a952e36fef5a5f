"""JSON in and out: encoding that never emits NaN or Infinity (they are not JSON; clients choke
on them), and strict decoding of what clients send."""

from __future__ import annotations

import json
import math
import secrets
from typing import Any, Union

import orjson


class Encoded:
    """JSON encoded already (the samples of a big detail, encoded by the worker processes that
    built them), spliced into a body as it is."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


def _encoded(obj: Any) -> Any:
    if isinstance(obj, Encoded):
        return orjson.Fragment(obj.data)
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


class InvalidJSON(ValueError):
    """A client's document is not strict JSON; the message says where and why, safe to show."""


def loads_strict(raw: Union[bytes, str]) -> Any:
    """Decode a client's JSON strictly: invalid UTF-8, lone surrogate escapes (`"\\ud800"`),
    NaN/Infinity and nesting deeper than 1,024 levels are refused with a clear message instead of
    an object that cannot be encoded again or a RecursionError further down."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(str(exc)) from None


def escape_text(text: str) -> str:
    """`text` as it can be sent: a name read from disk that is not valid UTF-8 arrives with
    surrogate escapes (PEP 383) and is shown with each undecodable byte as `%XX`; any other
    lone surrogate becomes U+FFFD. Valid text comes back unchanged."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append("%%%02X" % (code - 0xDC00))
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out)


def _clean(obj: Any) -> Any:
    """A copy that can always be encoded: non-finite floats as null, unencodable text escaped."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, str):
        return escape_text(obj)
    if isinstance(obj, dict):
        return {(escape_text(k) if isinstance(k, str) else k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _text(obj: Any) -> str:
    try:
        return json.dumps(obj, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(_clean(obj), allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def dumps(obj: Any) -> str:
    """Compact JSON that always encodes as UTF-8; the fast path pays only for the checks."""
    text = _text(obj)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = _text(_clean(obj))
    return text


_FAST = orjson.OPT_NON_STR_KEYS


def dumpb(obj: Any) -> bytes:
    # orjson writes non-finite floats as null itself and is several times faster on the big
    # bodies (a 10,000-sample detail); text it refuses (lone surrogates from undecodable file
    # names), integers beyond 64 bits and unknown types take the careful path.
    try:
        return orjson.dumps(obj, default=_encoded, option=_FAST)
    except (orjson.JSONEncodeError, TypeError):
        pass
    text = _text(obj)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _text(_clean(obj)).encode("utf-8")


def dumpb_sliced(obj: dict, key: str, size: int = 256) -> bytes:
    """dumpb(obj) with the list obj[key] encoded `size` items at a time.

    The encoder holds the GIL for a whole call: one call for a detail of thousands of samples
    kept every other thread, the event loop's included, waiting for tens of milliseconds."""
    items = obj.get(key)
    if isinstance(items, Encoded):
        encoded = items.data
    elif not isinstance(items, list) or len(items) <= size:
        return dumpb(obj)
    else:
        encoded = b"[" + b",".join(dumpb(items[i:i + size])[1:-1] for i in range(0, len(items), size)) + b"]"
    token = "slot-" + secrets.token_hex(16)
    head = dumpb({**obj, key: token})
    return head.replace(b'"' + token.encode() + b'"', encoded, 1)
