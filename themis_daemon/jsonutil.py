"""JSON encoding that never emits NaN or Infinity (they are not JSON; clients choke on them)."""

from __future__ import annotations

import json
import math
import secrets
from typing import Any


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    """Compact JSON; non-finite floats become null (the fast path pays nothing for the check)."""
    try:
        return json.dumps(obj, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(_clean(obj), allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def dumpb(obj: Any) -> bytes:
    return dumps(obj).encode("utf-8")


def dumpb_sliced(obj: dict, key: str, size: int = 256) -> bytes:
    """dumpb(obj) with the list obj[key] encoded `size` items at a time.

    The encoder holds the GIL for a whole call: one call for a detail of thousands of samples
    kept every other thread, the event loop's included, waiting for tens of milliseconds."""
    items = obj.get(key)
    if not isinstance(items, list) or len(items) <= size:
        return dumpb(obj)
    token = "slot-" + secrets.token_hex(16)
    head = dumpb({**obj, key: token})
    parts = [dumpb(items[i:i + size])[1:-1] for i in range(0, len(items), size)]
    return head.replace(b'"' + token.encode() + b'"', b"[" + b",".join(parts) + b"]", 1)
