"""The pure Themis 4 event fold, on its own (no I/O): the rules of spec §7–§9."""

from __future__ import annotations

import math

from themis_daemon.storage.themis4.fold import RunFold, summary_fields

METRICS = ["builtin/exact_match", "builtin/f1"]


def snapshot(cases=4, metrics=METRICS):
    return {
        "datasets": [{"dataset_id": "ds", "metadata": {},
                      "cases": [{"case_id": f"c{i}", "input": {"q": i}, "expected_output": str(i)}
                                for i in range(cases)]}],
        "component_refs": {"metrics": [{"component_id": m} for m in metrics],
                           "generator": {"component_id": "generator/x"}},
        "provenance": {"provider_metadata": {"generator": {"model_id": "m"}}},
        "identity": {"generation_prompt_spec": {"instructions": "Solve."}},
    }


class Feed:
    """Events with increasing positions and times, as a store would hand them over."""

    def __init__(self, fold):
        self.fold = fold
        self.pos = 0

    def __call__(self, kind, **fields):
        self.pos += 1
        ev = {"event_type": kind, "occurred_at": f"2026-01-01T00:00:{self.pos:02d}Z", **fields}
        self.fold.apply(self.pos, ev)
        return self.pos

    def case(self, case_id, scores=None, **extra):
        self("generation_completed", case_id=case_id, candidate_index=0, result={"final_output": "x"})
        self("reduction_completed", case_id=case_id, result={"final_output": "x"})
        self("parse_completed", case_id=case_id, result={"value": "x", "metadata": {}})
        for metric, value in (scores or {m: 1.0 for m in METRICS}).items():
            self("score_completed", case_id=case_id, metric_id=metric, score={"metric_id": metric, "value": value})


def fresh(**kw):
    fold = RunFold("r" * 64, snapshot(**kw))
    return fold, Feed(fold)


def test_pending_then_running_then_completed():
    fold, feed = fresh()
    assert summary_fields(fold)["status"] == "pending" and summary_fields(fold)["progress"] is None
    feed("run_started")
    assert (fold.status, summary_fields(fold)["status"]) == ("running", "in_progress")
    for i in range(4):
        feed.case(f"c{i}")
    feed("run_completed", completed_through_stage="judge")
    out = summary_fields(fold)
    assert (fold.status, out["status"], out["progress"], out["evaluated"]) == ("completed", "completed", 1.0, 4)
    assert out["created_at"] == "2026-01-01T00:00:01Z" and out["completed_at"] == out["updated_at"]


def test_failed_then_completed_is_partial_failure_for_ever():
    fold, feed = fresh()
    feed("run_started")
    feed.case("c0")
    feed("run_failed", error_message="budget")
    assert summary_fields(fold)["error_message"] == "budget"
    for i in range(1, 4):
        feed.case(f"c{i}")
    feed("run_completed", completed_through_stage="judge")
    assert fold.status == "partial_failure" and summary_fields(fold)["error_message"] is None
    assert summary_fields(fold)["resumed"] is True


def test_a_case_failure_after_completion_turns_it_partial():
    fold, feed = fresh()
    feed("run_started")
    feed("run_completed", completed_through_stage="judge")
    assert fold.status == "completed"
    feed("generation_failed", case_id="c0", candidate_id="c0-candidate-0", error_message="boom")
    assert fold.status == "partial_failure"


def test_score_failure_is_cleared_by_a_later_score_and_vice_versa():
    fold, feed = fresh()
    feed("run_started")
    feed.case("c0", scores={"builtin/exact_match": 1.0})
    feed("score_failed", case_id="c0", metric_id="builtin/f1", error={"reason": "bad"})
    assert fold.cases["c0"].has_failure()
    feed("score_completed", case_id="c0", metric_id="builtin/f1", score={"value": 0.5})
    assert not fold.cases["c0"].has_failure()
    assert fold.metric_means() == {"builtin/exact_match": 1.0, "builtin/f1": 0.5}
    feed("score_failed", case_id="c0", metric_id="builtin/f1", error={"reason": "bad again"})
    assert fold.metric_means() == {"builtin/exact_match": 1.0}
    # progress counts the case as failed once any failure event was seen
    assert summary_fields(fold)["failed"] == 1


def test_parse_error_makes_every_row_an_error():
    fold, feed = fresh(cases=2)
    feed("run_started")
    feed.case("c0", scores={"builtin/exact_match": 0.0, "builtin/f1": 0.2})
    feed.case("c1")
    feed("parse_failed", case_id="c0", candidate_id="c0-reduced", error_message="unparseable")
    assert fold.metric_means() == {"builtin/exact_match": 1.0, "builtin/f1": 1.0}
    assert set(fold.paired_scores()["builtin/f1"]) == {"c1"}
    sample = fold.sample("c0", {})
    assert sample["scores"] == {} and set(sample["errors"]) == set(METRICS)


def test_parser_null_and_invalid_outputs_are_error_rows():
    fold, feed = fresh(cases=2)
    feed("run_started")
    feed.case("c0")
    feed.case("c1")
    feed("parse_completed", case_id="c0", result={"value": None, "metadata": {}})
    feed("parse_completed", case_id="c1", result={"value": "x", "metadata": {"invalid": True}})
    assert fold.metric_means() == {}
    assert fold.cases["c0"].row_error("builtin/f1") == "Parser returned null output"


def test_repeated_events_are_counted_once():
    fold, feed = fresh()
    feed("run_started")
    feed.case("c0")
    feed.case("c0")  # Themis' store retry can write the same events again
    out = summary_fields(fold)
    assert (out["generated"], out["evaluated"], out["num_samples"]) == (1, 1, 1)


def test_generation_failures_drop_out_of_means_and_count_as_done():
    fold, feed = fresh(cases=2)
    feed("run_started")
    feed.case("c0", scores={"builtin/exact_match": 0.0, "builtin/f1": 0.5})
    feed("generation_failed", case_id="c1", candidate_id="c1-candidate-0", error_message="provider 400")
    out = summary_fields(fold)
    assert out["progress"] == 1.0 and out["failed"] == 1 and out["evaluated"] == 1
    assert fold.metric_means() == {"builtin/exact_match": 0.0, "builtin/f1": 0.5}
    assert fold.sample("c1", {})["error"] == "provider 400"


def test_generate_only_run_is_complete_without_scores():
    fold, feed = fresh(cases=1)
    feed("run_started")
    feed("generation_completed", case_id="c0", candidate_index=0, result={"final_output": "x"})
    feed("run_completed", completed_through_stage="generate")
    out = summary_fields(fold)
    assert (out["status"], out["progress"], out["num_samples"], out["metrics"]) == ("completed", 1.0, 0, {})


def test_unknown_and_malformed_events_are_counted_not_raised():
    fold, feed = fresh()
    feed("run_started")
    feed("telemetry_ping")
    feed("score_completed", metric_id="builtin/f1", score={"value": 1})  # no case id
    fold.apply(99, ["not", "an", "object"])
    assert fold.unknown_events == 1 and fold.bad_events == 2
    assert fold.status == "running"


def test_non_finite_scores_are_kept_out_of_means():
    fold, feed = fresh(cases=2)
    feed("run_started")
    feed.case("c0", scores={"builtin/exact_match": 1.0, "builtin/f1": math.nan})
    feed.case("c1", scores={"builtin/exact_match": 0.0, "builtin/f1": 0.5})
    assert fold.metric_means() == {"builtin/exact_match": 0.5, "builtin/f1": 0.5}


def test_candidates_are_listed_in_index_order():
    fold, feed = fresh(cases=1)
    feed("run_started")
    positions = {}
    for index in (2, 0, 1):
        positions[index] = feed("generation_completed", case_id="c0", candidate_index=index,
                                result={"final_output": f"out{index}"})
    red = feed("reduction_completed", case_id="c0", result={"final_output": "out1"})
    events = {pos: {"result": {"final_output": f"out{i}"}} for i, pos in positions.items()}
    events[red] = {"result": {"final_output": "out1"}}
    sample = fold.sample("c0", events, dataset={"references": {"c0": "1"}, "inputs": {"c0": {"q": 0}}})
    assert sample["candidates"] == ["out0", "out1", "out2"] and sample["response"] == "out1"
    assert sample["reference"] == "1" and sample["prompt"] == 'Instructions:\nSolve.\n\nInput:\n{"q": 0}'


def test_run_id_prefixes_resolve_uniquely_or_say_how_many_match():
    from themis_daemon.storage import AmbiguousRun, RunNotFound, Sources

    class Stub:
        name = root = "stub"
        generation = 0
        scanned = True
        root_error = None

        def __init__(self, ids):
            self.ids = ids

        def run_ids(self):
            return list(self.ids)

    a, b, c = "abcdef01" + "0" * 56, "abcdef01" + "1" * 56, "abcdef02" + "2" * 56
    sources = Sources([Stub([a, b, c])])
    assert sources.resolve(c[:8]) == c and sources.resolve(a) == a
    try:
        sources.resolve("abcdef01")
    except AmbiguousRun as exc:
        assert exc.matches == 2
    else:
        raise AssertionError("an ambiguous prefix resolved")
    for ref in ("abcdef0", "ABCDEF02", "zzzzzzzz", "abcdef0199"):
        try:
            sources.resolve(ref)
        except AmbiguousRun:
            raise AssertionError(ref)
        except RunNotFound:
            pass
        else:
            raise AssertionError(f"{ref} resolved")


def test_huge_scores_give_a_mean_not_an_overflow():
    fold, feed = fresh(cases=3)
    feed("run_started")
    for i in range(3):
        feed.case(f"c{i}", scores={"builtin/exact_match": 1.0, "builtin/f1": 1.5e308})
    means = fold.metric_means()
    assert means["builtin/f1"] == 1.5e308 and means["builtin/exact_match"] == 1.0


def test_a_fold_sent_between_processes_folds_on_identically():
    """Cold scans ship folds from worker processes packed; the receiver unpacks on first use."""
    import pickle

    fold, feed = fresh(cases=6)
    feed("run_started")
    feed.case("c0")
    feed.case("c1", scores={METRICS[0]: 0.0, METRICS[1]: 0.5})
    feed("generation_failed", case_id="c2", candidate_id="k", error_message="boom")
    copy = pickle.loads(pickle.dumps(fold))
    assert "cases" not in copy.__dict__  # still packed: nothing built until needed
    assert summary_fields(copy) == summary_fields(fold)
    for target in (fold, copy):
        replay = Feed(target)
        replay.pos = feed.pos
        replay.case("c3")
        replay("score_failed", case_id="c0", metric_id=METRICS[1], error={"reason": "judge down"})
        replay("run_completed", completed_through_stage="score")
    assert summary_fields(copy) == summary_fields(fold)
    assert copy.paired_scores() == fold.paired_scores()
    assert {k: c.__reduce__()[1] for k, c in copy.cases.items()} == {k: c.__reduce__()[1] for k, c in fold.cases.items()}


def test_sample_order_follows_every_event():
    """The order is kept between events; any event that changes a case changes it."""
    fold, feed = fresh(cases=5)
    feed("run_started")
    feed.case("c2")
    assert fold.sample_order() == ["c2"]
    feed("generation_completed", case_id="c0", candidate_index=0, result={"final_output": "x"})
    assert fold.sample_order() == ["c2"] and fold.sample_order(True) == ["c2", "c0"]
    feed("score_completed", case_id="c0", metric_id=METRICS[0], score={"value": 1.0})
    assert fold.sample_order() == ["c0", "c2"]
    feed("generation_failed", case_id="c4", candidate_id="k", error_message="boom")
    assert fold.sample_order() == ["c0", "c2", "c4"]


def test_a_big_fold_sent_packed_gives_its_order_and_pages_without_unpacking():
    """A scan worker sends a big run's detail order along, and a detail worker gets the packed
    cases as they came: the serving process builds no `Case` objects for a first big page."""
    import pickle

    from themis_daemon.storage.themis4 import fold as fold_mod
    from themis_daemon.storage.themis4.fold import PageFold

    fold, feed = fresh(cases=30)
    feed("run_started")
    for i in range(0, 30, 2):
        feed.case(f"c{i}", scores={METRICS[0]: i / 30, METRICS[1]: 1.0})
    feed("generation_failed", case_id="c5", candidate_id="k", error_message="boom")
    feed("generation_completed", case_id="c7", candidate_index=0, result={"final_output": "y"})
    old_ahead = fold_mod.ORDER_AHEAD
    fold_mod.ORDER_AHEAD = 10
    try:
        copy = pickle.loads(pickle.dumps(fold))
    finally:
        fold_mod.ORDER_AHEAD = old_ahead
    for pending in (False, True):
        assert copy.sample_order(pending) == fold.sample_order(pending)
    assert "cases" not in copy.__dict__
    page = fold.sample_order(True)[3:20]
    shipped = pickle.loads(pickle.dumps(PageFold(copy, page)))
    assert "cases" not in copy.__dict__  # the packing went as it was
    direct = pickle.loads(pickle.dumps(PageFold(fold, page)))
    assert sorted(shipped.cases) == sorted(direct.cases) == sorted(page)
    assert [shipped.sample(c, {}) for c in page] == [fold.sample(c, {}) for c in page]
    assert shipped.positions_for(page) == fold.positions_for(page)
    # once an event arrives, the receiver folds on and its order follows
    replay = Feed(copy)
    replay.pos = feed.pos
    replay.case("c7")
    assert "c7" in copy.sample_order() and "c7" not in fold.sample_order()


def test_readers_on_other_threads_while_a_poll_adds_cases():
    """A detail, a comparison or a summary reads a live run's fold on a request thread while
    the refresh thread adds cases to it: no 'dictionary changed size during iteration'."""
    import threading
    import time

    fold = RunFold("r" * 64, snapshot(cases=4))
    feed = Feed(fold)
    feed("run_started")
    for i in range(3000):
        feed.case(f"c{i}")
    stop = threading.Event()
    errors = []

    def poll():
        i = 3000
        while not stop.is_set() and i < 400_000:  # bounded
            feed("generation_completed", case_id=f"c{i}", candidate_index=0, result={"final_output": "x"})
            feed("score_completed", case_id=f"c{i}", metric_id=METRICS[0], score={"value": 1.0})
            i += 1

    writer = threading.Thread(target=poll)
    writer.start()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                fold.sample_order(True)
                fold.paired_scores()
                fold.counts()
                fold.metric_means()
            except RuntimeError as exc:  # noqa: PERF203 - what the test looks for
                errors.append(str(exc))
                break
    finally:
        stop.set()
        writer.join()
    assert not errors, errors
