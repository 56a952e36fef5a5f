"""JSON encoding that never emits NaN or Infinity (they are not JSON; clients choke on them)."""

from __future__ import annotations

import json
import math
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
