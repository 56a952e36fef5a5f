"""A run's per-line tables packed into one bytes object, and back.

A big store's runs hold hundreds of thousands of small tuples; a run nobody is looking at
keeps them packed instead (several times smaller, one object for the collector), scan
workers hand them back packed (pickling one bytes object instead of a million tuples), and
the persistent cache stores them as they are. Columns keep each table's order, which is
file order and matters.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import msgspec

Tables = Tuple[Dict[bytes, tuple], Dict[bytes, tuple], Dict[str, Dict[bytes, tuple]]]


class _EvalTable(msgspec.Struct, array_like=True):
    eval_id: str
    keys: List[bytes]
    gens: List[bytes]
    sids: List[Any]
    names: List[int]
    values: List[Tuple[float, ...]]
    fallbacks: List[Optional[str]]
    units: List[Union[int, Tuple[int, int, int]]]  # where each line is (run.pack_unit)


class _Packed(msgspec.Struct, array_like=True):
    gen_keys: List[bytes]
    gen_cols: Tuple[List[int], List[int], List[int], List[bool]]
    task_keys: List[bytes]
    task_cols: Tuple[List[int], List[int], List[int], List[Any]]
    names: List[Tuple[str, ...]]
    evals: List[_EvalTable]


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_Packed)


def _columns(table: Dict[bytes, tuple], width: int) -> tuple:
    if not table:
        return tuple([] for _ in range(width))
    return tuple(list(col) for col in zip(*table.values()))


def pack(gen: Dict[bytes, tuple], tasks: Dict[bytes, tuple], evals: Dict[str, Dict[bytes, tuple]]) -> bytes:
    names: Dict[Tuple[str, ...], int] = {}
    packed_evals = []
    for eval_id, table in evals.items():
        gens, sids, name_refs, values, fallbacks, units = _columns(table, 6)
        refs = [names.setdefault(n, len(names)) for n in name_refs]
        packed_evals.append(_EvalTable(eval_id, list(table), gens, sids, refs, values, fallbacks, units))
    return _ENCODER.encode(_Packed(list(gen), _columns(gen, 4), list(tasks), _columns(tasks, 4),
                                   list(names), packed_evals))


def unpack(blob: bytes, shared_names=lambda n: n) -> Tables:
    """The tables again; raises msgspec.DecodeError / ValidationError for a damaged blob."""
    p = _DECODER.decode(blob)
    gen = dict(zip(p.gen_keys, zip(*p.gen_cols))) if p.gen_keys else {}
    tasks = dict(zip(p.task_keys, zip(*p.task_cols))) if p.task_keys else {}
    names = [shared_names(n) for n in p.names]
    evals: Dict[str, Dict[bytes, tuple]] = {}
    for t in p.evals:
        refs = [names[i] for i in t.names]
        evals[t.eval_id] = dict(zip(t.keys, zip(t.gens, t.sids, refs, t.values, t.fallbacks, t.units)))
    return gen, tasks, evals

