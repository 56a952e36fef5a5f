"""The samples behind a verdict: paired samples of two runs by McNemar cell or by difference,
and a streamed CSV/JSONL download of one run's samples."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import re
from typing import Any, Dict, List

from tornado.iostream import StreamClosedError

from .. import jsonutil
from ..storage import RunNotFound, Unavailable
from .base import ApiError, BaseHandler

log = logging.getLogger("themis_daemon.web")

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
EXPORT_CHUNK = 500  # samples read and written per step of a download
FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}
FIXED_COLUMNS = ("id", "prompt", "response", "reference", "error")
UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class CompareSamplesHandler(BaseHandler):
    async def get(self) -> None:
        from ..stats import CompareError
        from ..stats.samples import KINDS, pair_items, select

        args = {}
        for name in ("run_a", "run_b", "metric"):
            # Absent is a bad request; present but blank names nothing that exists (404 below).
            value = self.get_query_argument(name, None, strip=False)
            if value is None or value == "":
                raise ApiError(400, f"Query parameter '{name}' is required")
            args[name] = value
        kind = self.get_query_argument("kind", "by_delta")  # given but empty: refused below
        if kind not in KINDS:
            raise ApiError(400, f"Unknown kind {kind!r}; use one of {', '.join(KINDS)}", kinds=list(KINDS))
        limit = self.query_int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = self.query_int("offset", 0, 0)
        await self.daemon.monitor.ensure_fresh()
        run_a, run_b = self.resolve_run(args["run_a"]), self.resolve_run(args["run_b"])
        if run_a == run_b:
            raise ApiError(400, f"run_a and run_b are the same run ({run_a}); pick two different runs")
        metric = args["metric"]
        store = self.daemon.store

        def compute() -> Dict[str, Any]:
            sel = select(store.scores(run_a), store.scores(run_b), metric, kind, run_a, run_b)
            stop = offset + limit
            keys = sel.keys[offset:stop]
            items = pair_items(sel, offset, stop, store.samples(run_a, keys), store.samples(run_b, keys), metric)
            total = len(sel.keys)
            return {
                "run_a": run_a, "run_b": run_b, "metric": metric, "kind": kind, "binary": sel.binary,
                "n": sel.n, "n_only_a": sel.n_only_a, "n_only_b": sel.n_only_b,
                "n_different": sel.n_different, "counts": sel.counts,
                "mean_a": sel.mean_a, "mean_b": sel.mean_b,
                "total": total, "offset": offset, "limit": limit,
                "next_offset": stop if stop < total else None,
                "lower_is_better": metric in set(self.config.compare.lower_is_better or ()),
                "items": items,
            }

        try:
            result = await self.read_store("Samples", compute)
        except CompareError as exc:
            raise ApiError(exc.status, exc.detail, **(getattr(exc, "extra", None) or {})) from None
        self.finish(jsonutil.dumpb(result))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class RunSamplesHandler(BaseHandler):
    """Every sample of a run, written and flushed a chunk at a time so a big run neither sits
    in memory as one body nor keeps the IOLoop busy."""

    async def get(self, ref: str) -> None:
        fmt = self.get_query_argument("format", "jsonl")  # given but empty: refused below
        if fmt not in FORMATS:
            raise ApiError(400, f"Unknown format {fmt!r}; use csv or jsonl", formats=sorted(FORMATS))
        await self.daemon.monitor.ensure_fresh()
        run_id = self.resolve_run(ref)
        store = self.daemon.store
        loop = asyncio.get_running_loop()

        def prepare():
            return store.sample_ids(run_id), sorted(store.scores(run_id))

        ids, metrics = await self.read_store("Samples", prepare)
        columns = [m if m not in FIXED_COLUMNS else f"score:{m}" for m in metrics]
        self.set_header("Content-Type", FORMATS[fmt])
        self.set_header("Content-Disposition",
                        f'attachment; filename="{UNSAFE_NAME.sub("_", run_id)[:120]}-samples.{fmt}"')
        self.set_header("X-Total-Count", str(len(ids)))

        def encode(chunk: List[Any], header: bool) -> bytes:
            samples = store.samples(run_id, chunk)
            if fmt == "jsonl":
                return b"".join(jsonutil.dumpb(s) + b"\n" for s in samples)
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\r\n")
            if header:
                writer.writerow(list(FIXED_COLUMNS) + columns)
            for s in samples:
                scores = s.get("scores") or {}
                writer.writerow([_cell(s.get("id")), _cell(s.get("prompt")), _cell(s.get("response")),
                                 _cell(s.get("reference")), _cell(s.get("error"))]
                                + [_cell(scores.get(m)) for m in metrics])
            return buf.getvalue().encode("utf-8")

        steps = [ids[i:i + EXPORT_CHUNK] for i in range(0, len(ids), EXPORT_CHUNK)] or [[]]
        for index, chunk in enumerate(steps):
            try:
                data = await loop.run_in_executor(self.daemon.executor, encode, chunk, index == 0)
            except (RunNotFound, Unavailable) as exc:
                if index == 0:
                    raise ApiError(503, f"Samples cannot be read right now: {exc}",
                                   headers={"Retry-After": "1"}) from None
                # Headers are out: a cut connection is the only honest signal left.
                log.warning("download of run %r stopped after %d samples: %s", run_id, index * EXPORT_CHUNK, exc)
                self.request.connection.close()
                return
            if data:
                self.write(data)
            try:
                await self.flush()
            except StreamClosedError:
                return  # the client went away
        self.finish()


default_handlers = [
    (r"/api/compare/samples", CompareSamplesHandler),
    (r"/api/runs/([^/]+)/samples", RunSamplesHandler),
]
