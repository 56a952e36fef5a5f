"""The Themis 4 event fold: run status, progress, scores and sample links from the events alone.

Pure (no I/O, no Tornado): the readers hand in decoded events with their store position and
this module reproduces what Themis 4.0.2's `ExecutionState.apply_event` and its benchmark rows
say (spec §7–§11), plus the reader's progress counts (§8). Stored projections are never used:
they lag live runs and stay wrong after a crash (§13).

Memory is kept small: per case only flags, score values and the store positions of the
events that hold text (generation, reduction), which details fetch on demand.
"""

from __future__ import annotations

import pickle
import threading
from operator import attrgetter
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from ..base import finite_mean

_EMPTY: Dict[Any, Any] = {}  # shared, never written

RUNNING, COMPLETED, PARTIAL, FAILED, PENDING = "running", "completed", "partial_failure", "failed", "pending"

# Themis status -> the daemon's status vocabulary (shared with Themis 1.x runs).
STATUS_MAP = {PENDING: "pending", RUNNING: "in_progress", COMPLETED: "completed", PARTIAL: "completed",
              FAILED: "failed"}

CASE_EVENTS = frozenset({
    "generation_completed", "generation_failed", "selection_completed", "selection_failed",
    "reduction_completed", "reduction_failed", "parse_completed", "parse_failed",
    "evaluation_completed", "evaluation_failed", "score_completed", "score_failed",
})
RUN_EVENTS = frozenset({"run_started", "run_completed", "run_failed"})
STEP_EVENTS = frozenset({"step_started", "step_completed", "step_failed"})


class Case:
    """What the fold keeps of one case (keyed by `case_id` alone, as Themis does)."""

    __slots__ = ("gen", "gen_fail", "sel_err", "red_err", "parse_err", "red_pos", "parsed",
                 "eval_fail", "exec_fail", "scores", "score_err", "failed_event", "score_det")

    def __init__(self) -> None:
        # Containers are created on first use: a store holds hundreds of thousands of cases.
        # position of candidate 0's generation_completed, or {candidate index: position} when
        # there are several candidates (one int per case is the common, compact case)
        self.gen: Union[None, int, Dict[int, int]] = None
        self.gen_fail: Optional[Dict[str, str]] = None  # planned candidate id -> message (sticky)
        self.sel_err: Optional[str] = None
        self.red_err: Optional[str] = None       # sticky, as in Themis
        self.parse_err: Optional[str] = None     # sticky, as in Themis
        self.red_pos: Optional[int] = None
        self.parsed: Optional[str] = None        # None | "ok" | "null" | "invalid"
        self.eval_fail: Optional[Dict[str, str]] = None  # metric -> message
        self.exec_fail: Optional[Dict[str, str]] = None  # metric -> message (workflow partial failure)
        self.scores: Optional[Dict[str, float]] = None   # metric -> value
        self.score_err: Optional[Dict[str, str]] = None  # metric -> reason
        self.failed_event = False                # any *_failed event ever seen (progress, §8)
        # metric -> position of its score_completed, only for scores that carry details
        # (builtin metrics store none, so most cases never make this dict)
        self.score_det: Optional[Dict[str, int]] = None

    def __reduce__(self):
        return (_case_from, _CASE_STATE(self))

    def has_failure(self) -> bool:
        return bool(self.gen_fail or self.sel_err is not None or self.red_err is not None
                    or self.parse_err is not None or self.eval_fail or self.exec_fail or self.score_err)

    def row_error(self, metric: str) -> Optional[str]:
        """Why this case's row for `metric` is an error row (Themis' precedence), else None."""
        if self.parse_err is not None:
            return self.parse_err
        if self.parsed == "null":
            return "Parser returned null output"
        if self.parsed == "invalid":
            return "Parser marked output as invalid"
        if self.eval_fail and metric in self.eval_fail:
            return self.eval_fail[metric]
        if self.exec_fail and metric in self.exec_fail:
            return self.exec_fail[metric]
        if self.score_err and metric in self.score_err:
            return self.score_err[metric]
        return None


def _case_from(*state: Any) -> Case:
    case = Case.__new__(Case)
    (case.gen, case.gen_fail, case.sel_err, case.red_err, case.parse_err, case.red_pos, case.parsed,
     case.eval_fail, case.exec_fail, case.scores, case.score_err, case.failed_event, case.score_det) = state
    return case


_CASE_STATE = attrgetter(*Case.__slots__)  # one C call for a case's whole state, in slot order


def _case_from_state(state: tuple) -> Case:
    return _case_from(*state)


_UNPACK_LOCK = threading.Lock()

ORDER_AHEAD = 2_000  # cases from which a fold sent by a scan worker brings its detail order along


def _float(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None

# One function per case event type, looked up once per event: a store's first scan applies
# hundreds of thousands of them.

def _on_score_completed(case: Case, pos: int, ev: Dict[str, Any]) -> None:
    metric = ev.get("metric_id")
    score = ev.get("score")
    if not (isinstance(metric, str) and isinstance(score, dict)):
        return
    value = _float(score.get("value"))
    if value is None:
        if case.score_err is None:
            case.score_err = {}
        case.score_err[metric] = "score value is not a number"
        if case.scores:
            case.scores.pop(metric, None)
    else:
        if case.scores is None:
            case.scores = {}
        case.scores[metric] = value
        if case.score_err:
            case.score_err.pop(metric, None)
    details = score.get("details")
    if value is not None and isinstance(details, dict) and details:
        if case.score_det is None:
            case.score_det = {}
        case.score_det[metric] = pos
    elif case.score_det:
        case.score_det.pop(metric, None)


def _on_generation_completed(case: Case, pos: int, ev: Dict[str, Any]) -> None:
    if ev.get("result") is None:
        return
    index = ev.get("candidate_index")
    gen = case.gen
    if gen is None and index == 0:
        case.gen = pos
        return
    if gen is None:
        gen = case.gen = {}
    elif isinstance(gen, int):
        gen = case.gen = {0: gen}
    gen[index if isinstance(index, int) else len(gen)] = pos


def _on_reduction_completed(case: Case, pos: int, ev: Dict[str, Any]) -> None:
    if ev.get("result") is not None:
        case.red_pos = pos


def _on_parse_completed(case: Case, pos: int, ev: Dict[str, Any]) -> None:
    result = ev.get("result")
    if isinstance(result, dict):
        meta = result.get("metadata")
        if result.get("value") is None:
            case.parsed = "null"
        elif isinstance(meta, dict) and meta.get("invalid") is True:
            case.parsed = "invalid"
        else:
            case.parsed = "ok"


def _on_selection_completed(case: Case, pos: int, ev: Dict[str, Any]) -> None:
    case.sel_err = None


def _on_evaluation_completed(case: Case, pos: int, ev: Dict[str, Any]) -> None:
    execution = ev.get("execution")
    metric = ev.get("metric_id")
    if isinstance(execution, dict) and isinstance(metric, str):
        if case.eval_fail:
            case.eval_fail.pop(metric, None)
        _workflow_failures(case, execution)


def _on_generation_failed(case: Case, pos: int, ev: Dict[str, Any]) -> None:
    case.failed_event = True
    cid = ev.get("candidate_id")
    if case.gen_fail is None:
        case.gen_fail = {}
    case.gen_fail[cid if isinstance(cid, str) else str(len(case.gen_fail))] = _msg(ev.get("error_message"))


def _on_score_failed(case: Case, pos: int, ev: Dict[str, Any]) -> None:
    case.failed_event = True
    metric = ev.get("metric_id")
    error = ev.get("error")
    if isinstance(metric, str) and error is not None:
        if case.scores:
            case.scores.pop(metric, None)
        if case.score_det:
            case.score_det.pop(metric, None)
        reason = error.get("reason") if isinstance(error, dict) else error
        if case.score_err is None:
            case.score_err = {}
        case.score_err[metric] = _msg(reason)


def _on_selection_failed(case: Case, pos: int, ev: Dict[str, Any]) -> None:
    case.failed_event = True
    case.sel_err = _msg(ev.get("error_message"))


def _on_reduction_failed(case: Case, pos: int, ev: Dict[str, Any]) -> None:
    case.failed_event = True
    case.red_err = _msg(ev.get("error_message"))


def _on_parse_failed(case: Case, pos: int, ev: Dict[str, Any]) -> None:
    case.failed_event = True
    case.parse_err = _msg(ev.get("error_message"))


def _on_evaluation_failed(case: Case, pos: int, ev: Dict[str, Any]) -> None:
    case.failed_event = True
    metric = ev.get("metric_id")
    if isinstance(metric, str):
        if case.eval_fail is None:
            case.eval_fail = {}
        case.eval_fail[metric] = _msg(ev.get("error_message"))


_CASE_HANDLERS = {
    "score_completed": _on_score_completed, "generation_completed": _on_generation_completed,
    "reduction_completed": _on_reduction_completed, "parse_completed": _on_parse_completed,
    "selection_completed": _on_selection_completed, "evaluation_completed": _on_evaluation_completed,
    "generation_failed": _on_generation_failed, "score_failed": _on_score_failed,
    "selection_failed": _on_selection_failed, "reduction_failed": _on_reduction_failed,
    "parse_failed": _on_parse_failed, "evaluation_failed": _on_evaluation_failed,
}
assert set(_CASE_HANDLERS) == CASE_EVENTS


class RunFold:
    """Incremental fold of one run. `apply` must see the run's events in store order.

    One thread applies events (a store's refresh) while request threads read the same fold:
    readers iterate copies of the case table (`list(...)`, taken in one step under the GIL),
    since a poll may add a case in the middle of their loop."""

    def __init__(self, run_id: str, snapshot: Optional[Dict[str, Any]] = None, info: Optional[Dict[str, Any]] = None):
        """From the run's snapshot, or from `info` (what `describe_snapshot` kept of it), so a
        fold can be started again without keeping the snapshot with its whole dataset."""
        self.run_id = run_id
        self.status = PENDING
        self.completed_through_stage: Optional[str] = None
        self.cases: Dict[str, Case] = {}
        self.created_at: Optional[str] = None
        self.updated_at: Optional[str] = None
        self.completed_at: Optional[str] = None
        self.error_message: Optional[str] = None
        self.finals = 0               # run_completed / run_failed seen (more than one: resumed)
        self.last_pos: Optional[int] = None
        self.started_pos: Optional[int] = None
        self.final_pos: Optional[int] = None
        self.events = 0
        self.unknown_events = 0
        self.bad_events = 0
        self.last_bad: Optional[str] = None
        if info is None:
            info = describe_snapshot(snapshot)
            # The dataset's texts are read again when a detail needs them, not kept per run.
            info = {k: v for k, v in info.items() if k not in ("references", "inputs")}
        self.info = info
        self.case_order: List[str] = info["case_ids"]
        self.metric_ids: List[str] = info["metric_ids"]
        self.total_cases: int = info["total_cases"]
        self.model: Optional[str] = info["model"]
        self.experiment_id: Optional[str] = info["experiment_id"]
        self.prompt_spec: Dict[str, Any] = info["prompt_spec"]

    # ------------------------------------------------------------------ transfer

    def __getstate__(self) -> Dict[str, Any]:
        # Cold scans send hundreds of thousands of cases from worker processes: plain tuples
        # pickle and unpickle several times faster than objects, and the receiver builds the
        # `Case` objects of a run only when something needs them (most runs never change).
        cases = self.__dict__.get("cases")
        if cases is not None and len(cases) >= ORDER_AHEAD:
            self.sample_order()  # a big run's first detail then needs no `Case` objects here
        state = dict(self.__dict__)
        state.pop("cases", None)
        if cases is not None:
            state["_packed"] = pickle.dumps((list(cases), list(map(_CASE_STATE, cases.values()))),
                                            protocol=pickle.HIGHEST_PROTOCOL)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __getattr__(self, name: str) -> Any:
        # Only reached when `cases` is not an attribute yet: a fold that arrived packed.
        if name != "cases":
            raise AttributeError(name)
        with _UNPACK_LOCK:
            cases = self.__dict__.get("cases")
            if cases is None:
                packed = self.__dict__.pop("_packed", None)
                keys, states = pickle.loads(packed) if packed is not None else ((), ())
                cases = dict(zip(keys, map(_case_from_state, states)))
                self.__dict__["cases"] = cases
        return cases

    # ------------------------------------------------------------------ applying events

    def apply(self, pos: int, event: Any) -> None:
        """Apply one decoded event; anything malformed is counted, never raised."""
        self.events += 1
        self.last_pos = pos
        if type(event) is not dict:
            self._bad(pos, "event is not a JSON object")
            return
        kind = event.get("event_type")
        at = event.get("occurred_at")
        if type(at) is str:
            self.updated_at = at
        if type(kind) is not str:
            self.unknown_events += 1
            return
        on_case = _CASE_HANDLERS.get(kind)  # one lookup: this runs for every event of a store
        if on_case is not None:
            case_id = event.get("case_id")
            if type(case_id) is not str:
                self._bad(pos, f"{kind} without a case_id")
                return
            case = self.cases.get(case_id)
            if case is None:
                case = self.cases[case_id] = Case()
            on_case(case, pos, event)
            if self.status == COMPLETED and case.has_failure():
                self.status = PARTIAL
        elif kind in RUN_EVENTS:
            self._apply_run(pos, kind, event, at if type(at) is str else None)
        elif kind not in STEP_EVENTS:
            self.unknown_events += 1

    def _bad(self, pos: int, why: str) -> None:
        self.bad_events += 1
        self.last_bad = f"event at position {pos}: {why}"

    def _apply_run(self, pos: int, kind: str, event: Dict[str, Any], at: Optional[str]) -> None:
        if kind == "run_started":
            if self.created_at is None:
                self.created_at = at
            if self.started_pos is None:
                self.started_pos = pos
            self.status = RUNNING
            return
        self.finals += 1
        self.final_pos = pos
        self.completed_at = at
        if kind == "run_failed":
            self.status = FAILED
            msg = event.get("error_message")
            self.error_message = msg if isinstance(msg, str) else None
            return
        saw_failures = self.status in (FAILED, PARTIAL) or any(c.has_failure() for c in self.cases.values())
        self.status = PARTIAL if saw_failures else COMPLETED
        stage = event.get("completed_through_stage")
        self.completed_through_stage = stage if isinstance(stage, str) else None

    # ------------------------------------------------------------------ derived figures

    def counts(self) -> Dict[str, int]:
        """Distinct-case progress counts (§8)."""
        metrics = self.metric_ids
        generated = evaluated = failed = scored = done = 0
        for case in list(self.cases.values()):  # a copy: a poll may add cases meanwhile
            if case.gen is not None:
                generated += 1
            scores, errs = case.scores or _EMPTY, case.score_err or _EMPTY
            attempted = bool(metrics) and all(m in scores or m in errs for m in metrics)
            if attempted:
                evaluated += 1
            if case.failed_event:
                failed += 1
            if case.scores:
                scored += 1
            if attempted or case.failed_event:
                done += 1
        return {"generated": generated, "evaluated": evaluated, "failed": failed, "scored": scored, "done": done}

    def metric_means(self) -> Dict[str, float]:
        """Per metric, the mean over non-error rows (Themis' `metric_means`, from events)."""
        sums: Dict[str, List[float]] = {}
        metrics = self.metric_ids
        for case in list(self.cases.values()):
            if not case.scores:
                continue
            names: Iterable[str] = metrics or list(case.scores)
            for metric in names:
                if metric not in case.scores or case.row_error(metric) is not None:
                    continue
                sums.setdefault(metric, []).append(case.scores[metric])
        out = {}
        for metric, values in sums.items():
            mean = finite_mean(values)
            if mean is not None:
                out[metric] = mean
        return out

    def paired_scores(self) -> Dict[str, Dict[str, List[float]]]:
        """Per metric, per case id, the score of every non-error row (what compare pairs on)."""
        out: Dict[str, Dict[str, List[float]]] = {}
        for case_id, case in list(self.cases.items()):
            for metric, value in list((case.scores or _EMPTY).items()):
                if case.row_error(metric) is None:
                    out.setdefault(metric, {})[case_id] = [value]
        return out

    def sample_order(self, include_pending: bool = False) -> List[str]:
        """Case ids shown in a detail, in dataset order: cases with a score row first (as the
        1.x API lists evaluated samples), then, if asked, the other cases that have events.
        Kept until the next event (every change of a case is one); callers must not modify it."""
        cached = self.__dict__.get("_order")
        if cached is None or cached[0] != self.events:
            cached = self._order = (self.events,) + self._sample_orders()
        return cached[2] if include_pending else cached[1]

    def _sample_orders(self) -> Tuple[List[str], List[str]]:
        scored, other = [], []
        seen = set()
        for case_id in self.case_order:
            case = self.cases.get(case_id)
            seen.add(case_id)
            if case is None:
                continue
            (scored if case.scores or case.score_err or case.has_failure() else other).append(case_id)
        for case_id, case in list(self.cases.items()):  # cases outside the dataset (should not happen)
            if case_id not in seen:
                (scored if case.scores or case.score_err else other).append(case_id)
        return scored, scored + other

    def positions_for(self, case_ids: List[str]) -> List[int]:
        """Store positions of the events a detail page needs for these cases."""
        out = []
        for case_id in case_ids:
            case = self.cases.get(case_id)
            if case is None:
                continue
            out.extend(generations(case).values())
            if case.red_pos is not None:
                out.append(case.red_pos)
        return out

    def detail_positions(self, case_ids: List[str]) -> Dict[int, Tuple[str, str]]:
        """{position: (case id, metric)} of the score events whose details these cases show."""
        out: Dict[int, Tuple[str, str]] = {}
        for case_id in case_ids:
            case = self.cases.get(case_id)
            if case is not None and case.score_det:
                for metric, pos in list(case.score_det.items()):
                    out[pos] = (case_id, metric)
        return out

    def sample(self, case_id: str, events: Dict[int, Any], pending: bool = False,
               dataset: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """One detail sample built from the fold, the fetched events of that case and the
        run's dataset (`describe_snapshot(...)`: references and inputs, read on demand).
        Called for every case of a detail page (10,000 for a big run), so it stays lean."""
        case = self.cases.get(case_id) or _NO_CASE
        gen = case.gen
        if gen is None:
            results = []
        elif type(gen) is int:
            results = [_result(events.get(gen))]
        else:
            results = [_result(events.get(gen[i])) for i in sorted(gen)]
        outputs = [r.get("final_output") for r in results if r]
        prompt = None
        for r in results:
            conv = r.get("conversation")
            if type(conv) is list:
                for m in conv:
                    if type(m) is dict and m.get("role") == "user":
                        prompt = m.get("content")
                        break
                if prompt is not None:
                    break
        if prompt is None:
            prompt = render_prompt(self.prompt_spec, (dataset or _EMPTY).get("inputs", _EMPTY).get(case_id))
        if case.red_pos is not None and case.red_pos in events:
            response: Any = _result(events[case.red_pos]).get("final_output")
        else:
            response = outputs[0] if outputs else None
        scores = case.scores or _EMPTY
        good: Dict[str, float] = {}
        errors: Dict[str, str] = {}
        if case.has_failure() or case.parsed in ("null", "invalid"):
            errs = case.score_err or _EMPTY
            whole_case = case.parse_err is not None or case.parsed in ("null", "invalid")
            for m in self.metric_ids or list(scores):
                msg = case.row_error(m)
                if msg is None:
                    if m in scores:
                        good[m] = scores[m]
                elif (whole_case or m in scores or m in errs or m in (case.eval_fail or _EMPTY)
                      or m in (case.exec_fail or _EMPTY)):
                    errors[m] = msg
        else:
            good = dict(scores)
        item: Dict[str, Any] = {
            "id": case_id,
            "prompt": prompt if type(prompt) is str else ("" if prompt is None else _text(prompt)),
            "response": response if type(response) is str else ("" if response is None else _text(response)),
            "reference": (dataset or _EMPTY).get("references", _EMPTY).get(case_id),
            "scores": good,
            "errors": errors,
        }
        if len(outputs) > 1:
            item["candidates"] = [_text(o) for o in outputs]
        failure = "; ".join((case.gen_fail or _EMPTY).values()) or case.red_err or case.sel_err or case.parse_err
        if failure:
            item["error"] = failure
        if pending:
            item["pending"] = True
        return item


class PageFold:
    """The part of a run's fold that building some detail samples needs (those cases, the
    metrics, the prompt spec): what a worker process receives to build a share of a big page.
    Its cases travel as plain tuples, which pickle several times faster than objects; a fold
    that still holds its cases packed (as a first scan sent them, for a run that has not
    changed since) sends that packing as it is, and the worker picks its cases out of it."""

    __slots__ = ("_cases", "_packed", "_ids", "metric_ids", "prompt_spec")

    def __init__(self, fold: "RunFold", case_ids: List[str]):
        packed = fold.__dict__.get("_packed") if "cases" not in fold.__dict__ else None
        self._packed, self._ids, self._cases = packed, case_ids, None
        if packed is None:
            cases = fold.cases
            self._cases = {cid: cases[cid] for cid in case_ids if cid in cases}
        self.metric_ids = fold.metric_ids
        self.prompt_spec = fold.prompt_spec

    @property
    def cases(self) -> Dict[str, Case]:
        if self._cases is None:
            keys, states = pickle.loads(self._packed)
            wanted = set(self._ids)
            self._cases = {k: _case_from_state(st) for k, st in zip(keys, states) if k in wanted}
        return self._cases

    def __reduce__(self):
        if self._cases is None:
            return (_page_fold_packed, (self._packed, self._ids, self.metric_ids, self.prompt_spec))
        return (_page_fold, (list(self._cases), list(map(_CASE_STATE, self._cases.values())),
                             self.metric_ids, self.prompt_spec))

    sample = RunFold.sample
    positions_for = RunFold.positions_for
    detail_positions = RunFold.detail_positions


def _page_fold(keys: List[str], states: List[tuple], metric_ids: Any, prompt_spec: Any) -> PageFold:
    page = PageFold.__new__(PageFold)
    page._cases = dict(zip(keys, map(_case_from_state, states)))
    page._packed = page._ids = None
    page.metric_ids = metric_ids
    page.prompt_spec = prompt_spec
    return page


def _page_fold_packed(packed: bytes, case_ids: List[str], metric_ids: Any, prompt_spec: Any) -> PageFold:
    page = PageFold.__new__(PageFold)
    page._cases, page._packed, page._ids = None, packed, case_ids
    page.metric_ids = metric_ids
    page.prompt_spec = prompt_spec
    return page


def generations(case: Case) -> Dict[int, int]:
    """{candidate index: position of its generation_completed} of a case."""
    gen = case.gen
    if gen is None:
        return {}
    return {0: gen} if isinstance(gen, int) else gen


_NO_CASE = Case()  # what a case without any event looks like (never written)


def _msg(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _result(event: Any) -> Dict[str, Any]:
    if isinstance(event, dict) and isinstance(event.get("result"), dict):
        return event["result"]
    return {}


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    import json

    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _workflow_failures(case: Case, execution: Dict[str, Any]) -> None:
    """A workflow execution with failures marks every metric it scored as an error row."""
    failures = execution.get("failures") or []
    metric_ids = {s.get("metric_id") for s in execution.get("scores") or [] if isinstance(s, dict)}
    for metric in list(case.exec_fail or ()):
        if metric in metric_ids:
            del case.exec_fail[metric]
    if execution.get("status") != "partial_failure" and not failures:
        return
    if case.exec_fail is None:
        case.exec_fail = {}
    message = "; ".join(f.get("error_message", "") for f in failures if isinstance(f, dict)) \
        or "Evaluation completed with workflow failures"
    for metric in metric_ids:
        if isinstance(metric, str):
            case.exec_fail[metric] = message


def render_prompt(spec: Dict[str, Any], case_input: Any) -> Optional[str]:
    """Themis' `PromptSpec.render_input` (§10): the fallback when no conversation was recorded."""
    import json

    if case_input is None:
        return None
    parts = []
    instructions = spec.get("instructions") if isinstance(spec, dict) else None
    if instructions:
        parts.append(f"Instructions:\n{instructions}")
    rendered = case_input if isinstance(case_input, str) else json.dumps(case_input, sort_keys=True)
    parts.append(f"Input:\n{rendered}")
    return "\n\n".join(parts)


def describe_snapshot(snapshot: Any) -> Dict[str, Any]:
    """Identity facts of a run from its snapshot (§4, §17); tolerant of missing parts."""
    snap = snapshot if isinstance(snapshot, dict) else {}
    datasets = [d for d in snap.get("datasets") or [] if isinstance(d, dict)]
    case_ids: List[str] = []
    references: Dict[str, Any] = {}
    inputs: Dict[str, Any] = {}
    for ds in datasets:
        for case in ds.get("cases") or []:
            if isinstance(case, dict) and isinstance(case.get("case_id"), str):
                cid = case["case_id"]
                if cid not in references:
                    case_ids.append(cid)
                references[cid] = case.get("expected_output")
                inputs[cid] = case.get("input")
    refs = snap.get("component_refs") if isinstance(snap.get("component_refs"), dict) else {}
    metric_ids = [m.get("component_id") for m in refs.get("metrics") or []
                  if isinstance(m, dict) and isinstance(m.get("component_id"), str)]
    prov = snap.get("provenance") if isinstance(snap.get("provenance"), dict) else {}
    gen_meta = (prov.get("provider_metadata") or {}).get("generator") if isinstance(prov.get("provider_metadata"), dict) else None
    model = gen_meta.get("model_id") if isinstance(gen_meta, dict) else None
    if not model:
        gen_ref = refs.get("generator")
        model = gen_ref.get("component_id") if isinstance(gen_ref, dict) else (gen_ref if isinstance(gen_ref, str) else None)
    experiment = None
    if datasets:
        meta = datasets[0].get("metadata")
        experiment = meta.get("benchmark_id") if isinstance(meta, dict) else None
        experiment = experiment or datasets[0].get("dataset_id")
    identity = snap.get("identity") if isinstance(snap.get("identity"), dict) else {}
    spec = identity.get("generation_prompt_spec") if isinstance(identity.get("generation_prompt_spec"), dict) else {}
    prov_env = prov.get("environment_metadata")
    meta = {
        "component_refs": refs or None,
        "metric_kinds": snap.get("metric_kinds"),
        "dataset_refs": identity.get("dataset_refs"),
        "candidate_policy": identity.get("candidate_policy"),
        "themis_version": prov.get("themis_version"),
        "environment_metadata": prov_env if isinstance(prov_env, dict) else None,
    }
    return {"case_ids": case_ids, "references": references, "inputs": inputs, "metric_ids": metric_ids,
            "total_cases": len(case_ids), "model": model, "experiment_id": experiment, "prompt_spec": spec,
            "meta": meta}


def summary_fields(fold: RunFold) -> Dict[str, Any]:
    """The API summary fields of a folded run (the mapping of the issue, §17)."""
    counts = fold.counts()
    native = fold.status
    status = STATUS_MAP.get(native, native)
    expected = fold.total_cases
    if status == "completed":
        progress: Optional[float] = 1.0
    elif expected and fold.events:
        progress = min(1.0, counts["done"] / expected)
    else:
        progress = None  # a pending run: nothing has happened yet
    return {
        "status": status,
        "native_status": native,
        "num_samples": counts["scored"],
        "metrics": fold.metric_means(),
        "created_at": fold.created_at,
        "updated_at": fold.updated_at,
        "completed_at": fold.completed_at,
        "error_message": fold.error_message if native == FAILED else None,
        "model": fold.model,
        "experiment_id": fold.experiment_id,
        "expected_samples": expected,
        "generated": counts["generated"],
        "evaluated": counts["evaluated"],
        "failed": counts["failed"],
        "progress": progress,
        # events after a run_completed/run_failed: Themis re-ran the run (it records no resume)
        "resumed": fold.finals > 1 or (fold.final_pos is not None and (fold.last_pos or 0) > fold.final_pos),
    }
