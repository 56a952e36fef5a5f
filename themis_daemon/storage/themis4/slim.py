"""Decoding Themis 4 JSON only as far as it is read: hot events for the fold, snapshots for details.

A `generation_completed` event carries the whole conversation and output; the fold keeps only
whether it has a result (a detail fetches the text by position later). Decoding every event in
full was most of a first scan's folding. msgspec decodes an event into a plain dict of the few
keys the fold asks about and skips the rest of the text without building objects for it; a
result object arrives as `{}` (or with just its `value` and `metadata`), which answers the
fold's questions (is there one? is it null? invalid?) as the whole object would. An event of
another type, or one whose fields do not have the expected types, returns None: the caller
decodes it in full, so the fold sees the same thing either way (tests hold the paths to that).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, TypedDict, Union

import msgspec

HOT_EVENTS = frozenset({"generation_completed", "score_completed", "reduction_completed", "parse_completed"})


class _Result(TypedDict, total=False):
    value: Any
    metadata: Optional[Dict[str, Any]]


class _Score(TypedDict, total=False):
    value: Union[bool, int, float, None]
    details: Optional[Dict[str, msgspec.Raw]]  # only whether there are any


class _Event(TypedDict, total=False):
    event_type: str
    case_id: Optional[str]
    occurred_at: Optional[str]
    candidate_index: Optional[int]
    metric_id: Optional[str]
    result: Optional[_Result]
    score: Optional[_Score]


_decode = msgspec.json.Decoder(_Event).decode
_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, TypeError)  # TypeError: not JSON text


def slim_event(data: Any) -> Optional[Dict[str, Any]]:
    """The fold's view of a hot event (its JSON as bytes or str), or None: decode it in full."""
    try:
        event = _decode(data)
    except _ERRORS:
        return None
    return event if event.get("event_type") in HOT_EVENTS else None


class _Case(TypedDict, total=False):
    case_id: Any
    expected_output: Any
    input: msgspec.Raw  # decoded only for a case whose prompt must be rendered from it


class _Dataset(TypedDict, total=False):
    cases: Optional[List[_Case]]


class _Snapshot(TypedDict, total=False):
    datasets: Optional[List[_Dataset]]


_decode_snapshot = msgspec.json.Decoder(_Snapshot).decode


class _Inputs(dict):
    """Case id -> the case's input, decoded when asked for (most samples show the prompt their
    conversation recorded and never need it)."""

    def get(self, key: Any, default: Any = None) -> Any:
        raw = super().get(key)
        return default if raw is None else msgspec.json.decode(raw)


def dataset_share(raw: Any, page: List[str]) -> Optional[Dict[str, Any]]:
    """References and inputs of these cases from a run's snapshot, as `describe_snapshot`
    gives them (the last case of an id wins), reading nothing else of a snapshot that holds
    the whole dataset; None when its shape is unexpected (then describe it in full)."""
    try:
        snapshot = _decode_snapshot(raw)
    except _ERRORS:
        return None
    wanted = set(page)
    references: Dict[str, Any] = {}
    inputs = _Inputs()
    for dataset in snapshot.get("datasets") or ():
        for case in dataset.get("cases") or ():
            cid = case.get("case_id")
            if type(cid) is str and cid in wanted:
                references[cid] = case.get("expected_output")
                inputs[cid] = case.get("input")
    return {"references": references, "inputs": inputs}
