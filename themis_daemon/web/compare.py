"""POST /api/compare: validation in the original's order, statistics off the IOLoop."""

from __future__ import annotations

import logging
import threading
from typing import Any, Dict, List, Optional, Tuple

from .. import jsonutil
from ..compute import Busy, WorkerLost
from ..stats.errors import TESTS, Cancelled, CompareError
from ..validation import describe
from .base import ApiError, BaseHandler

ORIGINAL_TESTS = ("t_test", "bootstrap", "permutation", "none")
log = logging.getLogger("themis_daemon.compare")

class CompareHandler(BaseHandler):
    _gone: Optional[threading.Event] = None
    _slot: Optional[int] = None

    def on_connection_close(self) -> None:
        # The client went away: the running job stops at its next check instead of holding a
        # statistics process for an answer nobody will read.
        if self._gone is not None:
            self._gone.set()
        if self._slot is not None:
            self.daemon.stats.cancel(self._slot)
        super().on_connection_close()

    def _queued(self, slot: int) -> None:
        self._slot = slot
        if self._gone is not None and self._gone.is_set():
            self.daemon.stats.cancel(slot)

    def get(self) -> None:
        """The configured defaults, so a client can mark lower-is-better metrics before it compares."""
        conf = self.config.compare
        self.finish(jsonutil.dumpb({"default_test": conf.default_test, "correction": conf.correction,
                                    "n_resamples": conf.n_resamples, "max_runs": conf.max_runs,
                                    "lower_is_better": list(conf.lower_is_better)}))

    async def post(self) -> None:
        self._gone = gone = threading.Event()

        body = self.json_body()
        if not isinstance(body, dict):
            raise ApiError(422, "Request body must be a JSON object",
                           errors=[{"pointer": "", "message": "expected an object"}])
        await self.daemon.monitor.ensure_fresh()
        store = self.daemon.store
        run_ids = body.get("run_ids")
        # The original's order of checks: unknown run (404), then count (400), then test (400).
        if isinstance(run_ids, list) and all(isinstance(r, str) for r in run_ids):
            # Runs are named as GET /api/runs/{id} names them: the id, a unique prefix of a
            # Themis 4 id, or a folder name with undecodable bytes as listed (`run-%FF`).
            run_ids = [self.resolve_run(ref) for ref in run_ids]
            if len(run_ids) < 2:
                raise ApiError(400, "Need at least 2 runs to compare")
            repeated = sorted({r for r in run_ids if run_ids.count(r) > 1})
            if repeated:
                raise ApiError(400, f"Each run can be compared once; repeated: {', '.join(repeated[:5])}")
            limit = self.config.compare.max_runs
            if len(run_ids) > limit:
                raise ApiError(400, f"At most {limit} runs per comparison (compare.max_runs); got {len(run_ids)}")
        test = body.get("statistical_test", self.config.compare.default_test)
        if isinstance(test, str) and test not in TESTS:
            raise ApiError(400, f"Invalid statistical test: {test}")
        problems = describe("compare_request", body)
        if problems:
            raise ApiError(422, "Request body does not match the compare_request schema", errors=problems)
        conf = self.config.compare
        kwargs: Dict[str, Any] = {
            "metrics": body.get("metrics"),
            "test": test,
            "alpha": body.get("alpha", 0.05),
            "correction": body.get("correction", conf.correction),
            "seed": body.get("seed", conf.seed),
            "n_resamples": body.get("n_resamples", conf.n_resamples),
            "lower_is_better": body.get("lower_is_better", conf.lower_is_better),
            "max_work": conf.max_work,
        }
        daemon = self.daemon

        wanted = kwargs["metrics"]

        def gather() -> List[Tuple[str, Any]]:
            # Building a run's per-sample view can take a while for big runs: not on the loop.
            runs: List[Tuple[str, Any]] = []
            for r in run_ids:
                if gone.is_set() or daemon.stopping:
                    raise Cancelled()
                scores = store.scores(r)
                if isinstance(wanted, list):  # only what the job reads crosses to its process
                    scores = {m: v for m, v in scores.items() if m in wanted}
                runs.append((r, scores))
            return runs

        daemon.jobs["compare_running"] += 1
        try:
            runs = await self.read_store("Run scores", gather)  # a run removed meanwhile: 404
            if gone.is_set() or daemon.stopping:
                raise Cancelled()
            result = await daemon.stats.run(runs, kwargs, on_slot=self._queued)
        except Busy:
            raise ApiError(503, "Too many comparisons in progress; retry shortly", headers={"Retry-After": "5"}) from None
        except WorkerLost as exc:
            raise ApiError(503, f"The statistics process was lost ({exc}); retry", headers={"Retry-After": "1"}) from None
        except CompareError as exc:
            raise ApiError(exc.status, exc.detail, **(getattr(exc, "extra", None) or {})) from None
        except Cancelled:
            daemon.jobs["compare_cancelled"] += 1
            log.info("compare of %d runs cancelled: %s", len(run_ids),
                     "the client went away" if gone.is_set() else "the server is stopping")
            if not gone.is_set():
                raise ApiError(503, "The server is stopping; the comparison was cancelled",
                               headers={"Retry-After": "1"}) from None
            return
        finally:
            daemon.jobs["compare_running"] -= 1
        self.finish(jsonutil.dumpb(result))


default_handlers = [
    (r"/api/compare", CompareHandler),
]
