"""Anytime-valid certification watched live (smoothviz.live) and the in-flight rows of a running run.

A point advanced live must reach exactly what the sequential engine stores for it (same seeds,
noise blocks, checkpoints and rule), whatever the step size; its bounds must keep their
guarantee at a stopping time chosen by looking at them; the sentence must say what the bounds
allow. A running sequential run records the bounds of its points in flight in the store, which
the Certify page turns into what is certified so far.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from smoothviz import analysis, certify, live
from smoothviz import sequential as sq
from smoothviz import sequential_engine as se
from smoothviz.errors import InvalidArgument
from smoothviz.models import load_checkpoint
from smoothviz.noise import NOISE_BLOCK
from smoothviz.sigma import parse_sigma_spec
from smoothviz.store import Store
from smoothviz.votes import argmax_classifier

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "assets" / "digits-cnn-constant-0.25.pt"
POINTS = [0, 17, 40, 101, 222, 333]
SEED = 7
N0 = 64


@pytest.fixture(scope="module")
def digits():
    from smoothviz.data import load_dataset

    model, _ = load_checkpoint(DIGITS, device="cpu", expected_dataset="digits")
    return model.eval(), load_dataset("digits")


def _run_live(rule, model, ds, i: int, sigma: float, max_rows: int, batch_size: int = 300) -> tuple[live.LivePoint,
                                                                                                     list[int]]:
    """Point i advanced to its end; also the samples each step drew."""
    point = live.start(rule, i, int(ds.test_y[i]), sigma, N0, SEED, ds.dim)
    clf = argmax_classifier(model)
    steps = []
    while not point.finished:
        before = point.samples
        point = live.advance(point, clf, ds.test_x[i], ds.num_classes, batch_size, max_rows)
        steps.append(point.samples - before)
    return point, steps


SETTINGS = {
    "radius, capped, tolerance": se.SequentialSettings.create("radius", max_radius=0.6, tolerance=0.01),
    "fixed radius 0.3": se.SequentialSettings.create("fixed-radius", radius=0.3),
    "fixed radius 0.3, union": se.SequentialSettings.create("fixed-radius", cs="union", radius=0.3),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_a_point_advanced_live_reaches_what_the_engine_stores(digits, name):
    model, ds = digits
    rule = SETTINGS[name].rule(0.001, 6144)
    sig = torch.full((len(POINTS),), 0.25)
    engine = list(se.iter_certify_sequential(model, ds.test_x[POINTS], ds.test_y[POINTS], POINTS, sig, N0, rule,
                                             ds.num_classes, 4096, "cpu", SEED))
    reasons = set()
    for want in engine:
        point, steps = _run_live(rule, model, ds, want.idx, 0.25, max_rows=NOISE_BLOCK)
        reasons.add(point.reason)
        assert (point.reason, point.class_a, point.t, point.k, point.lower, point.upper) == (
            want.stop_reason, want.class_a, want.samples, want.votes_a, want.p_a_lower, want.p_a_upper), want.idx
        assert len(point.history) == want.checkpoints
        assert tuple(point.selection) and sum(point.selection) == N0
        assert point.samples == want.selection + want.samples
        if want.predict != certify.ABSTAIN:  # the engine stores at least R for a point certified at R
            claimed = max(point.radius, rule.radius) if point.reason == "certified" else point.radius
            assert claimed == pytest.approx(want.radius, rel=1e-12)
            assert point.reason != "certified" or point.radius >= rule.radius * (1 - 1e-12)
        # each step is small: at most max_rows (one noise block here), several checkpoints while they fit
        assert max(steps) <= NOISE_BLOCK and steps[0] > N0 and sum(steps) == point.samples
    assert len(reasons) >= 2 or name.startswith("radius"), reasons  # the points do not all stop alike


def test_the_step_size_changes_nothing_but_the_steps(digits):
    model, ds = digits
    rule = SETTINGS["radius, capped, tolerance"].rule(0.001, 6144)
    small, small_steps = _run_live(rule, model, ds, 40, 0.25, max_rows=NOISE_BLOCK, batch_size=128)
    large, large_steps = _run_live(rule, model, ds, 40, 0.25, max_rows=10**6, batch_size=4096)
    assert small.history == large.history and small.reason == large.reason
    assert len(small_steps) > len(large_steps)
    assert live.step_rows(0, 5000, 3000) == 2 * NOISE_BLOCK and live.step_rows(2048, 5000, 3000) == 2952
    assert live.step_rows(0, 5000, 100) == NOISE_BLOCK  # at least one whole block
    assert live.step_rows(0, 16, 4) == 16  # a draw below one block is never split


def test_the_history_moves_one_way_and_sits_on_the_checkpoints(digits):
    model, ds = digits
    rule = se.SequentialSettings.create("radius").rule(0.001, 6144)
    point, _ = _run_live(rule, model, ds, 17, 0.25, max_rows=2 * NOISE_BLOCK)
    h = live.history_arrays(point)
    assert list(h["samples"]) == list(rule.schedule[:len(h["samples"])])
    assert np.all(np.diff(h["lower"]) >= 0) and np.all(np.diff(h["upper"]) <= 0) and np.all(np.diff(h["radius"]) >= 0)
    assert np.all(h["lower"] <= h["upper"])
    assert h["radius"][-1] == pytest.approx(float(sq.sound_radius(h["lower"][-1], 0.25)))
    assert point.reason == "budget" and point.t == 6144


def test_a_stopped_point_draws_nothing_more_and_keeps_its_bounds(digits):
    model, ds = digits
    rule = se.SequentialSettings.create("radius").rule(0.001, 100_000)
    clf = argmax_classifier(model)
    point = live.start(rule, 17, int(ds.test_y[17]), 0.25, N0, SEED)
    for _ in range(12):
        point = live.advance(point, clf, ds.test_x[17], ds.num_classes)
    assert not point.finished and point.lower > 0.5
    text = live.verdict(point, ds.class_names)
    assert "you may stop now or continue" in text and f"{point.lower:.6g}" in text and f"{point.radius:.4g}" in text
    stopped = point.stop()
    assert stopped.finished and not stopped.decided
    assert live.advance(stopped, clf, ds.test_x[17], ds.num_classes) is stopped
    text = live.verdict(stopped, ds.class_names)
    assert text.startswith(f"Stopped by you after {stopped.samples:,} samples") and "at every sample count" in text


# ---------------------------------------------------------------- what the sentence says, on classifiers of known p_A
def _threshold_classifier(cut: float):
    """Class 1 when the first input coordinate exceeds ``cut``, else 0: p(class 1) = Phi(-cut / sigma) at x = 0."""
    def classify(batch: torch.Tensor) -> torch.Tensor:
        return (batch.reshape(batch.shape[0], -1)[:, 0] > cut).long()

    classify.thread_safe = True
    return classify


def _until_decided(rule, cut: float, sigma: float = 1.0, seed: int = 0, max_rows: int = 10**6) -> live.LivePoint:
    point = live.start(rule, 0, 1, sigma, 32, seed)
    x = torch.zeros(4)
    while not point.finished:
        point = live.advance(point, _threshold_classifier(cut), x, 2, 4096, max_rows)
    return point


def test_the_sentences_say_certified_at_r_or_cannot_reach_r():
    names = ["zero", "one"]
    fixed = sq.FixedRadiusRule(alpha=0.001, n_max=50_000, radius=0.5)  # needs p_A >= Phi(0.5) = 0.6915
    high = _until_decided(fixed, stats.norm.ppf(1 - 0.95))  # p_A = 0.95
    assert high.reason == "certified"
    text = live.verdict(high, names)
    assert text.startswith("Certified at R = 0.5.") and "class A = one" in text
    assert f"{stats.norm.cdf(0.5):.6g}" in text and "at every sample count simultaneously" in text
    low = _until_decided(fixed, stats.norm.ppf(1 - 0.6))  # p_A = 0.6 < 0.6915
    assert low.reason == "below-target"
    text = live.verdict(low, names)
    assert text.startswith("Cannot reach R = 0.5.") and f"p_A ≤ {low.upper:.6g}" in text
    assert low.upper < stats.norm.cdf(0.5)
    unreachable = live.start(sq.FixedRadiusRule(alpha=0.001, n_max=100, radius=5.0), 0, 1, 1.0, 32, 0)
    assert unreachable.decided and unreachable.reason == "short"
    assert live.verdict(unreachable, names).startswith("Cannot reach radius R = 5")


def test_the_sentences_of_radius_mode():
    names = ["zero", "one"]
    rule = sq.RadiusRule(alpha=0.001, n_max=20_000)
    coin = _until_decided(rule, 0.3)  # p(class 1) = Phi(-0.3) = 0.38: c_A is class 0 with p_A = 0.62
    assert coin.reason == "budget" and coin.class_a == 0 and coin.lower > 0.5
    assert live.verdict(coin, names).startswith("The budget of n_max = 20,000 estimation samples is spent.")
    even = _until_decided(rule, 0.0)  # p_A = 1/2 exactly: never certified, the upper bound falls towards 1/2
    assert even.lower <= 0.5
    assert "nothing is certified" in live.verdict(even, names)
    assert _until_decided(rule, 0.3, max_rows=64).history == coin.history  # in pieces: the same path
    capped = _until_decided(sq.RadiusRule(alpha=0.001, n_max=20_000, max_radius=0.5), -3.0)
    assert capped.reason == "radius-cap" and "at least the maximum radius" in live.verdict(capped, names)
    assert capped.radius >= 0.5


def test_abstain_is_said_when_the_upper_bound_excludes_a_majority():
    names = ["zero", "one"]
    calls = {"n": 0}

    def selection_then_minority(batch: torch.Tensor) -> torch.Tensor:  # the selection picks 1, which then loses
        calls["n"] += 1
        return torch.ones(batch.shape[0], dtype=torch.long) if calls["n"] == 1 else (
            batch.reshape(batch.shape[0], -1)[:, 0] > 1.0).long()

    point = live.start(sq.RadiusRule(alpha=0.001, n_max=20_000), 0, 1, 1.0, 32, 0)
    while not point.finished:
        point = live.advance(point, selection_then_minority, torch.zeros(4), 2, 4096, 10**6)
    assert point.class_a == 1 and point.reason == "abstain" and point.upper <= 0.5
    text = live.verdict(point, names)
    assert text.startswith("Abstain.") and "≤ 1/2 for class A = one" in text


def test_reading_the_live_bounds_whenever_one_likes_keeps_the_level():
    """Stop each stream where its lower bound is highest (the most a peeking user could claim):
    anytime validity says the bound exceeds the true p_A in at most a fraction alpha of streams."""
    alpha, p, streams = 0.2, stats.norm.cdf(1.0), 120  # p_A = P(eps > -1) = Phi(1)
    rule = sq.RadiusRule(alpha=alpha, n_max=1024)
    over = 0
    for seed in range(streams):
        point = _until_decided(rule, -1.0, seed=seed)
        over += bool(live.history_arrays(point)["lower"].max() >= p)
    assert over <= stats.binom.ppf(0.999, streams, alpha), over


def test_start_refuses_what_the_rule_cannot_use():
    rule = sq.RadiusRule(alpha=0.01, n_max=100, r=0.1, dim=64)
    with pytest.raises(InvalidArgument, match="n0 = 0"):
        live.start(rule, 0, 0, 0.25, 0, 0, 64)
    with pytest.raises(InvalidArgument, match="dim = None"):
        live.start(rule, 0, 0, 0.25, 10, 0)
    with pytest.raises(InvalidArgument, match="max_rows"):
        live.advance(live.start(rule, 0, 0, 0.25, 10, 0, 64), _threshold_classifier(0.0), torch.zeros(4), 2,
                     max_rows=0)


# ---------------------------------------------------------------- a running run's partial results
def _stored(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["idx", "label", "predict", "correct", "radius", "counts", "selection", "samples"])


def test_partial_results_count_in_flight_points_with_their_current_radius():
    stored = _stored([
        {"idx": 2, "label": 1, "predict": 1, "correct": True, "radius": 0.4, "counts": [1, 99], "selection": 10,
         "samples": 100},
        {"idx": 5, "label": 3, "predict": -1, "correct": False, "radius": 0.0, "counts": [], "selection": 0,
         "samples": 0},
    ])
    flight = pd.DataFrame({"idx": [2, 7, 8, 9], "samples": [80, 400, 50, 3000], "lower": [0.9, 0.8, 0.3, 0.95],
                           "upper": [1.0, 0.9, 0.7, 0.99], "sigma": [0.25, 0.5, 0.25, 0.25], "class_a": [1, 4, 2, 6],
                           "label": [1, 4, 2, 0]})
    rows = live.partial_results([2, 5, 7, 8, 9, 11], stored, flight, 10, 0.0, None).set_index("idx")
    assert rows.loc[2, "state"] == "decided" and rows.loc[2, "radius"] == 0.4  # stored beats a stale in-flight row
    assert rows.loc[7, "state"] == "in flight" and rows.loc[7, "correct"]
    assert rows.loc[7, "radius"] == pytest.approx(0.5 * stats.norm.ppf(0.8))
    assert rows.loc[8, "predict"] == -1 and rows.loc[8, "radius"] == 0.0  # lower <= 1/2: nothing yet
    assert rows.loc[9, "predict"] == 6 and not rows.loc[9, "correct"]  # certified, but not the label
    assert rows.loc[11, "state"] == "waiting" and rows.loc[11, "samples"] == 0
    assert rows["samples"].tolist() == [110, 0, 410, 60, 3010, 0]
    curve = analysis.accuracy_curve(rows.reset_index())
    assert curve.loc[curve["radius"] == 0.0, "certified_accuracy"].item() == pytest.approx(2 / 6)
    cost = live.sample_cost(rows.reset_index(), 10, 5000)
    assert (cost.used, cost.decided, cost.in_flight, cost.fixed) == (3590, 2, 3, 6 * 5010)
    assert cost.text().startswith("samples used so far 3,590 (for 2 decided and 3 in-flight points) vs a fixed-n "
                                  "run's 6 points × 5,010 = 30,060")


def test_partial_results_use_the_sound_radius_for_an_input_dependent_sigma():
    flight = pd.DataFrame({"idx": [0], "samples": [64], "lower": [0.99], "upper": [1.0], "sigma": [0.3],
                           "class_a": [1], "label": [1]})
    rows = live.partial_results([0], _stored([]), flight, 10, 0.05, 64)
    assert rows.loc[0, "radius"] == pytest.approx(float(sq.sound_radius(0.99, 0.3, 0.05, 64)))
    assert rows.loc[0, "radius"] < 0.3 * stats.norm.ppf(0.99)  # less than the naive radius


# ---------------------------------------------------------------- the store's in-flight rows
def _sequential_run(store: Store, indices: list[int], settings: dict, n: int = 4000) -> int:
    spec = "constant:0.25"
    return store.create_run("seq", "digits", "test", str(DIGITS), spec, parse_sigma_spec(spec), 0.0, 100, n, 0.001,
                            "cpu", indices, SEED, 4096, sequential=settings)


def test_in_flight_rows_are_replaced_at_once_and_go_with_any_status_change(tmp_path):
    settings = se.SequentialSettings.create("radius").to_dict()
    with Store(tmp_path / "s.db") as store:
        assert store.in_flight(1).empty  # no table yet: nothing in flight
        run = _sequential_run(store, [0, 1, 2], settings)
        other = _sequential_run(store, [0, 1, 2], {**settings, "tolerance": 0.5})
        pool = {"idx": [0, 1], "samples": [16, 20], "lower": [0.4, 0.7], "upper": [0.9, 1.0], "sigma": [0.25, 0.25],
                "class_a": [3, 4], "label": [3, 5]}
        store.set_in_flight(run, pool)
        store.set_in_flight(other, {**pool, "idx": [2], **{k: pool[k][:1] for k in pool if k != "idx"}})
        got = store.in_flight(run)
        assert got[["idx", "samples", "class_a", "label"]].values.tolist() == [[0, 16, 3, 3], [1, 20, 4, 5]]
        assert got["lower"].tolist() == [0.4, 0.7] and (got["updated"] > 0).all()
        store.set_in_flight(run, {k: v[1:] for k, v in pool.items()})  # one transaction replaces the run's rows
        assert store.in_flight(run)["idx"].tolist() == [1]
        assert store.in_flight(other)["idx"].tolist() == [2]  # another run's rows stay
        with pytest.raises(InvalidArgument, match="lack sigma"):
            store.set_in_flight(run, {k: v for k, v in pool.items() if k != "sigma"})
        with pytest.raises(InvalidArgument, match="different numbers"):
            store.set_in_flight(run, {**pool, "lower": [0.5]})
        assert store.in_flight(run)["idx"].tolist() == [1]  # a refused write changes nothing
        store.set_status(run, "running")
        assert store.in_flight(run).empty
        store.set_in_flight(run, pool)
        store.delete_run(run, force=True)
        assert store.in_flight(run).empty and store.in_flight(other)["idx"].tolist() == [2]


def test_a_running_sequential_run_records_its_points_in_flight_and_clears_them(tmp_path, monkeypatch):
    monkeypatch.setattr(certify, "IN_FLIGHT_SECONDS", 0.0)  # record every round, so a short run records some
    settings = se.SequentialSettings.create("radius").to_dict()
    with Store(tmp_path / "s.db") as store:
        run = _sequential_run(store, list(range(0, 360, 24)), settings)
        seen: list[pd.DataFrame] = []
        lock = threading.Lock()

        def progress(info: dict) -> None:
            with lock:
                seen.append(store.in_flight(run))

        assert certify.run_certification(store, run, progress=progress) == "done"
        assert store.in_flight(run).empty  # cleared when the run ended
        results = store.results(run).set_index("idx")
    rows = pd.concat([s for s in seen if len(s)])
    assert len(rows) and set(rows["idx"]) <= set(results.index)
    assert ((rows["lower"] <= rows["upper"]) & (rows["samples"] > 0) & (rows["samples"] <= 4000)).all()
    assert (rows["sigma"] == np.float32(0.25)).all()
    final = results.loc[rows["idx"]]
    # what was in flight was a path towards each point's stored result
    assert (rows["class_a"].to_numpy() == final["class_a"].to_numpy()).all()
    assert (rows["label"].to_numpy() == final["label"].to_numpy()).all()
    assert (rows["lower"].to_numpy() <= final["p_a_lower"].to_numpy()).all()
    assert (rows["samples"].to_numpy() <= final["samples"].to_numpy()).all()


def test_the_recorder_writes_at_most_every_interval(tmp_path):
    settings = se.SequentialSettings.create("radius").to_dict()
    with Store(tmp_path / "s.db") as store:
        run = _sequential_run(store, [0, 1], settings)
        writes = []
        original = store.set_in_flight
        store.set_in_flight = lambda run_id, pool: (writes.append(pool), original(run_id, pool))  # type: ignore
        passed = []
        recorder = certify._InFlightRecorder(store, run, passed.append, interval=3600.0)
        pool = {f: [] for f in ("idx", "samples", "lower", "upper", "sigma", "class_a", "label")}
        for info in ({"done": 0, "pool": pool}, {"done": 0, "pool": {**pool}}, {"done": 1}):
            recorder(info)
        assert len(writes) == 1 and len(passed) == 3  # the first pool written, every report passed on
        eager = certify._InFlightRecorder(store, run, None, interval=0.0)
        eager({"pool": pool})
        eager({"pool": pool})  # the same pool again: nothing new to write
        eager({"pool": {**pool}})
        assert len(writes) == 3
