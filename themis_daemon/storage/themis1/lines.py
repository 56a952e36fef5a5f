"""What the reader keeps of each JSONL line, decoded without building the whole object.

A record line is mostly model output (kept on disk, read again by offset) and an evaluation
line mostly per-score details and metadata; the summary needs a handful of fields. A typed
msgspec decoder takes just those and skips the rest without allocating it, several times
faster than decoding everything. A line that does not fit the expected shape (or that the
strict decoder refuses, such as a `NaN` token) goes through the general parser and the same
rules, so the result never depends on which path a line took.

Each parser returns what the reader keeps, None for a line that holds nothing to keep (a
header, a line without its key), and raises ValueError for a line that is not JSON.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import msgspec

from .jsonl import HEADER_TYPE, loads

_FALLBACK = (msgspec.ValidationError, msgspec.DecodeError)


class _Score(msgspec.Struct):
    # Strict types: a score that is not a named number sends the line to the general path.
    metric_name: str
    value: float


class _Evaluation(msgspec.Struct):
    sample_id: Any = None
    scores: Optional[List[_Score]] = None


class _EvalLine(msgspec.Struct):
    cache_key: Any = None
    evaluation: Optional[_Evaluation] = None
    type_: Any = msgspec.field(default=None, name="_type")


class _Record(msgspec.Struct):
    cache_key: Any = None
    task_key: Any = None
    output: Any = None
    error: Any = None
    type_: Any = msgspec.field(default=None, name="_type")


class _TaskBody(msgspec.Struct):
    metadata: Any = None


class _Task(msgspec.Struct):
    task_key: Any = None
    task: Optional[_TaskBody] = None
    type_: Any = msgspec.field(default=None, name="_type")


_EVAL = msgspec.json.Decoder(_EvalLine)
_RECORD = msgspec.json.Decoder(_Record)
_TASK = msgspec.json.Decoder(_Task)

Scores = Tuple[Tuple[str, ...], Tuple[float, ...]]


def _scores(items: Any) -> Scores:
    names: List[str] = []
    values: List[float] = []
    for sc in items or ():
        if isinstance(sc, dict):
            name, value = sc.get("metric_name"), sc.get("value")
        elif isinstance(sc, _Score):
            name, value = sc.metric_name, sc.value
        else:
            continue
        if isinstance(name, str) and isinstance(value, (int, float)):
            if name in names:  # a repeated metric in one line: the last value wins
                values[names.index(name)] = float(value)
            else:
                names.append(name)
                values.append(float(value))
    return tuple(names), tuple(values)


def parse_evaluation(line: bytes) -> Optional[Tuple[str, Any, Tuple[str, ...], Tuple[float, ...]]]:
    """(cache key, sample id, metric names, values) of an evaluation line."""
    try:
        obj = _EVAL.decode(line)
    except _FALLBACK:
        return _evaluation_slow(loads(line))
    if obj.type_ == HEADER_TYPE or not isinstance(obj.cache_key, str) or obj.evaluation is None:
        return None
    scores = obj.evaluation.scores or ()
    names = tuple([sc.metric_name for sc in scores])
    if len(set(names)) != len(names):
        names, values = _scores(scores)
    else:
        values = tuple([sc.value for sc in scores])
    return obj.cache_key, _sample_id(obj.evaluation.sample_id), names, values


def _sample_id(value: Any) -> Any:
    # Sample ids key the reader's tables: an object or a list there makes the line unusable.
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise ValueError(f"sample_id is a {type(value).__name__}, not a string or number")


def _evaluation_slow(obj: Any):
    if not isinstance(obj, dict) or obj.get("_type") == HEADER_TYPE:
        return None
    key, ev = obj.get("cache_key"), obj.get("evaluation")
    if not isinstance(key, str) or not isinstance(ev, dict):
        return None
    scores = ev.get("scores")
    if scores is not None and not isinstance(scores, list):
        raise ValueError(f"scores is a {type(scores).__name__}, not a list")
    names, values = _scores(scores)
    return key, _sample_id(ev.get("sample_id")), names, values


def parse_record(line: bytes) -> Optional[Tuple[str, bool]]:
    """(cache key, whether the generation produced output without error) of a record line."""
    try:
        obj = _RECORD.decode(line)
    except _FALLBACK:
        obj = loads(line)
        if not isinstance(obj, dict) or obj.get("_type") == HEADER_TYPE:
            return None
        key = obj.get("cache_key") or obj.get("task_key")
        if not isinstance(key, str):
            return None
        return key, obj.get("output") is not None and not obj.get("error")
    if obj.type_ == HEADER_TYPE:
        return None
    key = obj.cache_key or obj.task_key
    if not isinstance(key, str):
        return None
    return key, obj.output is not None and not obj.error


def parse_task(line: bytes) -> Optional[Tuple[str, Any]]:
    """(task key, dataset id or None) of a task line."""
    try:
        obj = _TASK.decode(line)
    except _FALLBACK:
        obj = loads(line)
        if not isinstance(obj, dict) or obj.get("_type") == HEADER_TYPE:
            return None
        key = obj.get("task_key")
        if not isinstance(key, str):
            return None
        task = obj.get("task") if isinstance(obj.get("task"), dict) else {}
        md = task.get("metadata") if isinstance(task.get("metadata"), dict) else {}
        return key, md.get("dataset_id")
    if obj.type_ == HEADER_TYPE or not isinstance(obj.task_key, str):
        return None
    md = obj.task.metadata if obj.task is not None else None
    return obj.task_key, md.get("dataset_id") if isinstance(md, dict) else None
