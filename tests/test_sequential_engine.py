"""Sequential engine (smoothviz.sequential_engine): against a point-by-point reference, invariant
to batching, resumable, sound end to end, and in agreement with fixed-n CERTIFY.

The references do not reuse the engine: a point sampled alone with torch.randn from the
documented seeds (one generator reseeded per noise block, block numbers counting on across
draws), the checkpoint schedule and the stopping decisions written out from their documentation,
the mixture bounds of smoothviz.sequential (checked against mpmath in test_sequential.py) and
scipy's Clopper-Pearson bound for the fixed-n run.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from smoothviz import certify, noise
from smoothviz import sequential as sq
from smoothviz import sequential_engine as se
from smoothviz.errors import InvalidArgument
from smoothviz.models import load_checkpoint
from smoothviz.store import Store

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "assets" / "digits-cnn-constant-0.25.pt"
ALPHA = 0.001


@pytest.fixture
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    """The shipped digits CNN (sigma 0.25) and the digits test split."""
    from smoothviz.data import load_dataset

    model, _ = load_checkpoint(DIGITS, device="cpu", expected_dataset="digits")
    ds = load_dataset("digits")
    return model.eval(), ds


def _fields(result) -> dict:
    """A result's fields except the time it took."""
    d = dataclasses.asdict(result)
    d.pop("seconds")
    return d


# ---------------------------------------------------------------------------------------------
# A point sampled alone, decided as the documentation says
# ---------------------------------------------------------------------------------------------


def _schedule(n_max: int, first: int, growth: float) -> list[int]:
    """checkpoint_schedule's documented rule: ceil(first * growth^(j-1)), up to a multiple of the
    noise block once that is reached, repeats dropped, cut at n_max (always the last)."""
    out: list[int] = []
    j = 0
    while True:
        t = math.ceil(first * growth ** j)
        if t >= noise.NOISE_BLOCK:
            t = noise.NOISE_BLOCK * math.ceil(t / noise.NOISE_BLOCK)
        if t >= n_max:
            return [*out, n_max]
        if not out or t > out[-1]:
            out.append(t)
        j += 1


def _reference_fixed_radius(model, x, sigma, idx, seed, n0, n_max, radius, num_classes):
    """Fixed-radius sequential CERTIFY of one point: (c_A, t, k, lower, upper, reason, counts)."""
    g = torch.Generator()
    blocks = {"next": 0}

    def votes(stage: int, rows: int, first_block: int) -> np.ndarray:
        out = np.zeros(num_classes, dtype=np.int64)
        for b, size in enumerate(noise.block_sizes(rows), start=first_block):
            g.manual_seed(noise.derive_seed(noise.derive_seed(seed, idx, stage), b))
            eps = torch.randn((size, *x.shape), generator=g)
            with torch.no_grad():
                labels = model(x.unsqueeze(0) + sigma * eps).argmax(1)
            out += np.bincount(labels.numpy(), minlength=num_classes)
        return out

    c_a = int(np.argmax(votes(0, n0, 0)))
    target = float(stats.norm.cdf(radius / sigma))
    every_k = np.arange(n_max + 1)
    final_lower, _ = sq.mixture_bounds(every_k, n_max, ALPHA)
    reach = np.flatnonzero((final_lower >= target) & (final_lower > 0.5))
    k_needed = int(reach[0]) if reach.size else n_max + 1
    counts = np.zeros(num_classes, dtype=np.int64)
    t, lower, upper = 0, 0.0, 1.0
    if n_max < k_needed:
        return c_a, 0, 0, 0.0, 1.0, "short", counts, False
    for t_next in _schedule(n_max, 16, 1.25):
        rows = t_next - t
        counts += votes(3, rows, blocks["next"])
        blocks["next"] += len(noise.block_sizes(rows))
        t = t_next
        low, up = sq.mixture_bounds(int(counts[c_a]), t, ALPHA)
        lower, upper = max(lower, float(low)), min(upper, float(up))
        if lower >= target and lower > 0.5:
            return c_a, t, int(counts[c_a]), lower, upper, "certified", counts, True
        if upper < target:
            return c_a, t, int(counts[c_a]), lower, upper, "below-target", counts, True
        if t >= n_max:
            return c_a, t, int(counts[c_a]), lower, upper, "budget", counts, True
        if counts[c_a] + n_max - t < k_needed:
            return c_a, t, int(counts[c_a]), lower, upper, "short", counts, True
    raise AssertionError("the schedule ends at n_max")


def test_engine_matches_a_point_sampled_alone(digits, one_torch_thread) -> None:
    model, ds = digits
    idx = [0, 13, 48, 63, 101, 150, 222]
    n0, n_max, radius, seed = 50, 6000, 0.5, 4
    x, y = ds.test_x[idx], ds.test_y[idx]
    sigmas = torch.full((len(idx),), 0.25)
    rule = se.SequentialSettings.create("fixed-radius", radius=radius).rule(ALPHA, n_max, 0.0, ds.dim)
    got = {r.idx: r for r in se.iter_certify_sequential(model, x, y, idx, sigmas, n0, rule, 10, 256, "cpu", seed)}
    assert sorted(got) == idx
    reasons = set()
    for j, i in enumerate(idx):
        c_a, t, k, lower, upper, reason, counts, sampled = _reference_fixed_radius(
            model, x[j], 0.25, i, seed, n0, n_max, radius, 10)
        res = got[i]
        assert (res.class_a, res.samples, res.votes_a, res.stop_reason) == (c_a, t, k, reason), i
        assert res.counts == counts.tolist() and sum(res.counts) == res.samples
        assert res.p_a_lower == pytest.approx(lower, rel=1e-12) and res.p_a_upper == pytest.approx(upper, rel=1e-12)
        assert res.selection == (n0 if sampled else 0)
        certified = lower > 0.5
        assert res.predict == (c_a if certified else -1) and res.correct == (res.predict == int(y[j]))
        if certified:
            want = 0.25 * stats.norm.ppf(lower)
            assert res.radius == pytest.approx(max(want, radius) if reason == "certified" else want, rel=1e-9)
            assert res.naive_radius == pytest.approx(want, rel=1e-9)
        else:
            assert res.radius == res.naive_radius == 0.0
        reasons.add(reason)
    assert {"certified", "below-target", "short"} <= reasons, reasons  # the points exercise the verdicts


# ---------------------------------------------------------------------------------------------
# Batching, threads, rounds and neighbours change nothing
# ---------------------------------------------------------------------------------------------


def _integer_classifier(batch: torch.Tensor) -> torch.Tensor:
    """Label = the largest coordinate after rounding down to 1/16 (first on ties): a function of
    each sample alone, in integer arithmetic, so exact on any device and for any batch."""
    return torch.floor(batch.flatten(1) * 16).long().argmax(1)


_integer_classifier.thread_safe = True  # type: ignore[attr-defined]


def _toy_points(m: int) -> tuple[torch.Tensor, list[int], list[int], torch.Tensor]:
    """m 4-d points whose first coordinate leads by margins from none to large, sigma 0.5."""
    lead = torch.linspace(0.0, 1.6, m)
    x = torch.zeros(m, 4)
    x[:, 0] = lead
    return x, [0] * m, list(range(100, 100 + m)), torch.full((m,), 0.5)


@pytest.mark.parametrize("mode", ["fixed-radius", "radius"])
def test_results_do_not_depend_on_batching_threads_rounds_or_neighbours(mode, one_torch_thread) -> None:
    x, labels, idx, sigmas = _toy_points(24)
    settings = (se.SequentialSettings.create("fixed-radius", radius=0.5) if mode == "fixed-radius"
                else se.SequentialSettings.create("radius", max_radius=1.2, tolerance=0.01))
    rule = settings.rule(0.01, 20_000, 0.0, 4)

    def run(batch: int, round_rows: int | None, threads: int, subset=slice(None)):
        return {r.idx: _fields(r) for r in se.iter_certify_sequential(
            _integer_classifier, x[subset], labels[subset], idx[subset], sigmas[subset], 40, rule, 4, batch,
            "cpu", 7, round_rows=round_rows, threads=threads)}

    base = run(256, None, 1)
    assert run(7, 1, 1) == base
    assert run(4096, 10**6, 2) == base
    assert run(100, 3000, 3) == base
    alone = run(256, None, 1, slice(5, 8))
    assert alone == {i: base[i] for i in idx[5:8]}
    reasons = {r["stop_reason"] for r in base.values()}
    assert len(reasons) >= 2, reasons  # the toy points stop for different reasons


def test_real_cnn_results_do_not_depend_on_batch_size_or_threads(digits) -> None:
    model, ds = digits
    idx = [0, 48, 63, 101, 150, 222, 270, 351]
    classify = certify.engine_classifier(model, {}, "cpu", 256, ds.input_shape).classify
    rule = se.SequentialSettings.create("fixed-radius", radius=0.5).rule(ALPHA, 2500, 0.0, ds.dim)

    def run(batch: int, threads: int):
        return {r.idx: _fields(r) for r in se.iter_certify_sequential(
            classify, ds.test_x[idx], ds.test_y[idx], idx, torch.full((len(idx),), 0.25), 100, rule, 10, batch,
            "cpu", 0, threads=threads)}

    assert run(256, 1) == run(96, 2)


# ---------------------------------------------------------------------------------------------
# The store: a sequential run resumes like a fixed one
# ---------------------------------------------------------------------------------------------


def _config(indices, sequential, n=2500):
    return dict(name="seq", dataset="digits", split="test", checkpoint=str(DIGITS), sigma_spec="constant:0.25",
                sigma_params={"kind": "constant", "sigma": 0.25}, r=0.0, n0=100, n=n, alpha=ALPHA,
                device="cpu", indices=indices, seed=2, batch_size=256, sequential=sequential)


def test_a_cancelled_run_resumes_to_the_clean_result(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(certify, "CANCEL_POLL_SECONDS", 0.0)
    settings = se.SequentialSettings.create("radius", tolerance=0.02).to_dict()
    config = _config(list(range(3, 360, 36)), settings)
    with Store(tmp_path / "clean.db") as clean:
        run = clean.create_run(**config)
        assert certify.run_certification(clean, run) == "done"
        want = clean.results(run)
    with Store(tmp_path / "resumed.db") as store:
        run = store.create_run(**config)
        assert store.find_run(**config) == run and store.find_run(**{**config, "sequential": None}) is None
        seen = []

        def progress(info: dict) -> None:
            seen.append(info)
            if info["done"] >= 1:
                store.request_cancel(run)

        assert certify.run_certification(store, run, progress=progress) == "cancelled"
        partial = len(store.results(run))
        assert 1 <= partial < len(config["indices"])
        assert certify.run_certification(store, run) == "done"
        got = store.results(run)
        assert store.run(run)["sequential"] == settings
    assert got.drop(columns="seconds").equals(want.drop(columns="seconds"))
    fractions = [s["fraction"] for s in seen]
    assert fractions == sorted(fractions) and all(0 <= f <= 1 for f in fractions)
    assert seen[-1]["samples"] > 0 and {"done", "total", "rate", "eta", "in_flight"} <= set(seen[-1])
    pools = [s["pool"] for s in seen if s["pool"]["idx"]]
    assert pools and all(set(p["idx"]) <= set(config["indices"]) for p in pools)
    assert all(0 <= lo <= up <= 1 and 0 < t < 2500 for p in pools
               for lo, up, t in zip(p["lower"], p["upper"], p["samples"], strict=True))
    # what each row says about its samples adds up
    assert (got["samples"] == [sum(c) for c in got["counts"]]).all()
    assert (got["votes_a"] == [c[a] for c, a in zip(got["counts"], got["class_a"], strict=True)]).all()
    assert (got["selection"] == 100).all() and (got["samples"] <= 2500).all()
    assert ((got["predict"] == -1) == (got["p_a_lower"] <= 0.5)).all()


def test_prepared_run_must_match_the_stored_rule(tmp_path: Path) -> None:
    settings = se.SequentialSettings.create("fixed-radius", radius=0.25).to_dict()
    with Store(tmp_path / "s.db") as store:
        run = store.create_run(**_config([0, 1], settings))
        prepared = certify.prepare_run({**_config([0, 1], None), "batch_size": 256})
        with pytest.raises(InvalidArgument, match="sequential rule"):
            certify.run_certification(store, run, prepared=prepared)
        assert store.results(run).empty


def test_bad_settings_are_refused_before_anything_runs(tmp_path: Path) -> None:
    bad = {**se.SequentialSettings.create("fixed-radius", radius=0.25).to_dict(), "radius": -1.0}
    with pytest.raises(InvalidArgument, match="radius"):
        certify.prepare_run({**_config([0], bad), "batch_size": 256})


# ---------------------------------------------------------------------------------------------
# Sound end to end: a classifier whose p_A is known exactly
# ---------------------------------------------------------------------------------------------


def _threshold_classifier(c: float):
    """Class 0 where the first noise coordinate is below c: p_0 = Phi(c) at x = 0, sigma = 1."""

    def classify(batch: torch.Tensor) -> torch.Tensor:
        return (batch[:, 0] >= c).long()

    return classify


class _PeekingRule(sq.FixedRadiusRule):
    """A rule that reads a fixed-n Clopper-Pearson bound at every checkpoint (no correction)."""

    def bounds_at(self, k, checkpoint):
        t = self.schedule[np.asarray(checkpoint, dtype=np.int64)].astype(float)
        k = np.asarray(k, dtype=float)
        level = np.full(np.shape(k), self.alpha)
        return sq._cp_bounds(k, t, level)


def test_wrong_certificates_at_the_boundary_stay_below_alpha(one_torch_thread) -> None:
    """True p_A just below Phi(R): every 'certified at R' is wrong. Through the engine (packing,
    seeded noise, rounds), the wrong fraction stays below alpha for both sequences, while a rule
    that peeks at a fixed-n bound at every checkpoint exceeds it (the check has power)."""
    alpha, radius, points, n_max = 0.1, 1.0, 300, 3000
    c = radius - 0.02  # p_A = Phi(0.98) < Phi(1.0)
    x = torch.zeros(points, 3)
    sigmas = torch.ones(points)
    labels, idx = [0] * points, list(range(points))
    slack = 3 * math.sqrt(alpha * (1 - alpha) / points)

    def wrong(rule) -> float:
        res = list(se.iter_certify_sequential(_threshold_classifier(c), x, labels, idx, sigmas, 20, rule, 2, 512,
                                              "cpu", 11))
        return float(np.mean([r.stop_reason == "certified" for r in res]))

    for method in sq.METHODS:
        first, growth = se.DEFAULT_SCHEDULE[method]
        rule = sq.FixedRadiusRule(alpha=alpha, n_max=n_max, radius=radius, method=method, first=first,
                                  growth=growth)
        assert wrong(rule) <= alpha + slack, method
    peeking = _PeekingRule(alpha=alpha, n_max=n_max, radius=radius)
    assert wrong(peeking) > alpha + slack


# ---------------------------------------------------------------------------------------------
# Agreement with fixed-n CERTIFY on the shipped digits model
# ---------------------------------------------------------------------------------------------


def test_sequential_and_fixed_n_runs_agree(digits) -> None:
    """Same model, points and seed: c_A is the fixed run's (same selection seeds); "certified at R"
    and abstentions agree wherever the fixed run's p_A estimate lies farther from the threshold
    than 2.5 times its Clopper-Pearson half-width (the mixture sequence is at most 1.9 times
    wider, and the two runs' estimation samples are independent)."""
    model, ds = digits
    idx = list(range(5, 360, 18))
    n0, n, radius = 100, 5000, 0.5
    classify = certify.engine_classifier(model, {}, "cpu", 256, ds.input_shape).classify
    x, y = ds.test_x[idx], ds.test_y[idx]
    sigmas = torch.full((len(idx),), 0.25)
    fixed = list(certify.iter_certify(classify, x, y, idx, None, n0, n, ALPHA, 10, 256, "cpu", 0, 0.0, ds.dim,
                                      sigmas=sigmas))
    modes = {
        "fixed-radius": se.SequentialSettings.create("fixed-radius", radius=radius),
        "radius": se.SequentialSettings.create("radius"),
    }
    seq = {name: {r.idx: r for r in se.iter_certify_sequential(
        classify, x, y, idx, sigmas, n0, s.rule(ALPHA, n, 0.0, ds.dim), 10, 256, "cpu", 0)}
        for name, s in modes.items()}
    target = float(stats.norm.cdf(radius / 0.25))
    checked = {"certified": 0, "abstain": 0}
    for f in fixed:
        k = max(f.counts)
        p_hat = k / n
        half = p_hat - (float(stats.beta.ppf(ALPHA, k, n - k + 1)) if k else 0.0)
        for name in modes:
            s = seq[name][f.idx]
            if f.predict != -1:
                assert s.class_a == f.predict, f.idx
        s = seq["fixed-radius"][f.idx]
        if abs(p_hat - target) > 2.5 * half:
            assert (s.stop_reason == "certified") == (f.radius >= radius), (f.idx, p_hat, s.stop_reason)
            checked["certified"] += 1
        s = seq["radius"][f.idx]
        if abs(p_hat - 0.5) > 2.5 * half:
            assert (s.predict == -1) == (f.predict == -1), (f.idx, p_hat)
            checked["abstain"] += 1
    assert checked["certified"] >= len(idx) // 2 and checked["abstain"] >= len(idx) // 2, checked
    saved = np.mean([r.samples for r in seq["fixed-radius"].values()])
    print(f"fixed-radius R={radius}: {saved:.0f} estimation samples per point on average against n = {n}")


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def test_settings_round_trip_and_name_the_sequence() -> None:
    s = se.SequentialSettings.create("fixed-radius", cs="betting", radius=0.25)
    assert s.method == "mixture" and (s.first, s.growth) == se.DEFAULT_SCHEDULE["mixture"]
    assert se.SequentialSettings.from_dict(s.to_dict()) == s
    u = se.SequentialSettings.create("radius", cs="union", max_radius=0.9, tolerance=0.01)
    assert u.method == "union-cp" and u.describe() == "radius max-radius=0.9 tolerance=0.01 union-cp"
    rule = u.rule(0.01, 5000, 0.1, 64)
    assert isinstance(rule, sq.RadiusRule) and (rule.max_radius, rule.tolerance, rule.r) == (0.9, 0.01, 0.1)
    assert se.rule_for_run({"sequential": None}, 0.0, 64) is None
    got = se.rule_for_run({"sequential": s.to_dict(), "n": 3000, "alpha": 0.01}, 0.0, 64)
    assert isinstance(got, sq.FixedRadiusRule) and (got.n_max, got.radius, got.alpha) == (3000, 0.25, 0.01)
    assert se.STAGE_SEQUENTIAL not in (certify.STAGE_SELECTION, certify.STAGE_ESTIMATION, certify.STAGE_PREDICT)


@pytest.mark.parametrize("make", [
    lambda: se.SequentialSettings(mode="fixed-radius"),
    lambda: se.SequentialSettings(mode="fixed-radius", radius=0.25, tolerance=0.1),
    lambda: se.SequentialSettings(mode="radius", radius=0.25),
    lambda: se.SequentialSettings(mode="radius", max_radius=-1.0),
    lambda: se.SequentialSettings(mode="sideways"),
    lambda: se.SequentialSettings(mode="radius", method="cp"),
    lambda: se.SequentialSettings(mode="radius", growth=1.0),
    lambda: se.SequentialSettings.create("radius", cs="bets"),
    lambda: se.SequentialSettings.from_dict({"mode": "radius", "colour": "red"}),
    lambda: se.SequentialSettings.from_dict({"mode": "radius", "prior": [1, 2]}),
    lambda: se.SequentialSettings.from_dict(["radius"]),
    lambda: se.rule_for_run({"sequential": {"mode": "radius"}, "n": None, "alpha": 0.01}, 0.0, 64),
])
def test_bad_settings_raise_one_line(make) -> None:
    with pytest.raises(InvalidArgument) as err:
        make()
    assert "\n" not in str(err.value)


def test_cuda_engine_runs_and_repeats_exactly() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here: the sequential engine's CUDA run is checked where one exists")
    x, labels, idx, sigmas = _toy_points(16)
    rule = se.SequentialSettings.create("fixed-radius", radius=0.5).rule(0.01, 20_000, 0.0, 4)

    def run(batch: int):
        return {r.idx: _fields(r) for r in se.iter_certify_sequential(
            _integer_classifier, x, labels, idx, sigmas, 40, rule, 4, batch, "cuda", 7)}

    assert run(512) == run(8192)
