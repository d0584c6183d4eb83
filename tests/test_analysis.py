"""Certified-accuracy analysis on hand-checkable frames and against a brute-force loop."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pandas as pd
import pytest

from smoothviz import analysis
from smoothviz.errors import InvalidArgument

# idx 2 abstains, idx 3 is wrong with a large radius (never counts), idx 5 is correct at radius 0.
FRAME = pd.DataFrame({
    "idx": [0, 1, 2, 3, 4, 5],
    "label": [0, 1, 0, 1, 2, 2],
    "predict": [0, 1, -1, 0, 2, 2],
    "correct": [True, True, False, False, True, True],
    "radius": [0.5, 0.2, 0.0, 0.7, 1.0, 0.0],
    "naive_radius": [0.6, 0.3, 0.0, 0.8, 1.2, 0.1],
})


def test_table_at_radii() -> None:
    table = analysis.accuracy_table(FRAME, radii=(0, 0.25, 0.5, 0.75, 1.0, 1.01))
    assert table["radius"].tolist() == [0, 0.25, 0.5, 0.75, 1.0, 1.01]
    assert table["certified_accuracy"].tolist() == pytest.approx([4 / 6, 2 / 6, 2 / 6, 1 / 6, 1 / 6, 0])
    naive = analysis.accuracy_table(FRAME, radii=(0.25,), use="naive_radius")
    assert naive["certified_accuracy"].item() == pytest.approx(3 / 6)
    with pytest.raises(InvalidArgument):
        analysis.accuracy_table(FRAME, use="bogus")


def test_curve_is_the_step_function() -> None:
    curve = analysis.accuracy_curve(FRAME)
    assert curve["radius"].tolist() == [0.0, 0.2, 0.5, 1.0]
    assert curve["certified_accuracy"].tolist() == pytest.approx([4 / 6, 3 / 6, 2 / 6, 1 / 6])


def test_curve_matches_brute_force_on_random_frames() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        m = int(rng.integers(1, 40))
        df = pd.DataFrame({
            "correct": rng.random(m) < 0.7,
            "radius": np.round(rng.exponential(0.5, m), 2),
            "predict": rng.integers(-1, 3, m),
        })
        radii = np.linspace(0, 2, 41)
        curve = analysis.accuracy_curve(df, radii=radii)
        brute = [sum(c and r >= t for c, r in zip(df.correct, df.radius)) / m for t in radii]
        assert curve["certified_accuracy"].tolist() == pytest.approx(brute)


def test_acr_and_abstention() -> None:
    assert analysis.average_certified_radius(FRAME) == pytest.approx(1.7 / 6)
    assert analysis.average_certified_radius(FRAME, use="naive_radius") == pytest.approx(2.2 / 6)
    assert analysis.abstention_rate(FRAME) == pytest.approx(1 / 6)


def test_per_class_and_fairness_gaps() -> None:
    per_class = analysis.per_class_accuracy(FRAME, 0.25, class_names=["zero", "one", "two", "three"])
    assert per_class["name"].tolist() == ["zero", "one", "two", "three"]
    assert per_class["count"].tolist() == [2, 2, 2, 0]
    assert per_class["certified"].tolist() == [1, 0, 1, 0]
    acc = per_class["certified_accuracy"].tolist()
    assert acc[:3] == pytest.approx([0.5, 0.0, 0.5]) and math.isnan(acc[3])
    gaps = analysis.fairness_gaps(per_class)
    assert gaps["max_minus_min"] == pytest.approx(0.5)
    assert gaps["std"] == pytest.approx(math.sqrt(2 / 36))


def test_empty_and_mismatched_inputs() -> None:
    assert math.isnan(analysis.certified_accuracy([], [], 0.0))
    with pytest.raises(InvalidArgument):
        analysis.certified_accuracy([0.1, 0.2], [True], 0.0)


def test_run_ceiling_against_mpmath() -> None:
    mpmath.mp.dps = 40
    p = mpmath.power(mpmath.mpf("0.001"), mpmath.mpf(1) / 100000)
    expected = float(mpmath.mpf("0.25") * mpmath.sqrt(2) * mpmath.erfinv(2 * p - 1))
    run = {"n": 100000, "alpha": 0.001, "sigma_max": 0.25, "sigma_params": {}}
    assert analysis.run_ceiling(run) == pytest.approx(expected, rel=1e-10)
    assert 3.7 * 0.25 < expected < 3.9 * 0.25  # the 3.8 sigma of the architecture notes
    constant = {"n": 100000, "alpha": 0.001, "sigma_max": None,
                "sigma_params": {"kind": "constant", "sigma": 0.25}}
    assert analysis.run_ceiling(constant) == pytest.approx(expected, rel=1e-10)
    assert math.isnan(analysis.run_ceiling({"n": None, "alpha": None, "sigma_max": 0.5}))


def test_compare_table_puts_radii_first_and_naive_claims_beside_them() -> None:
    knn_run = {"r": 0.05, "sigma_spec": "knn:0.25,0.05,20,m=1.46249", "n": 1000, "n0": 100, "alpha": 0.001,
               "dataset": "digits", "status": "done"}
    const_run = {"r": 0.0, "sigma_spec": "constant:0.25", "n": 1000, "n0": 100, "alpha": 0.001,
                 "dataset": "digits", "status": "done"}
    table = analysis.compare_table([("#1 knn", knn_run, FRAME), ("#2 const", const_run, FRAME)], radii=(0, 0.25),
                                   spec_label=lambda spec: spec.split(",")[0])
    assert list(table.columns[:5]) == ["run", "R=0", analysis.naive_column(0), "R=0.25", analysis.naive_column(0.25)]
    assert "no guarantee" in analysis.naive_column(0.25)
    knn, const = table.iloc[0], table.iloc[1]
    assert knn["R=0.25"] == pytest.approx(2 / 6) and knn[analysis.naive_column(0.25)] == pytest.approx(3 / 6)
    assert pd.isna(const[analysis.naive_column(0.25)])  # constant sigma: naive = sound, no second column value
    assert knn["σ"] == "knn:0.25" and knn["ACR"] == pytest.approx(1.7 / 6) and knn["points"] == 6
    only_constant = analysis.compare_table([("#2 const", const_run, FRAME)], radii=(0, 0.25))
    assert not any("naive" in c for c in only_constant.columns)
    assert only_constant.loc[0, "σ"] == "constant:0.25"


def test_a_naive_only_run_gets_naive_columns_its_label_and_its_audit() -> None:
    """A ddrs run (r NULL) stores sound radius 0: its table row says so and shows the naive claims beside."""
    ddrs_run = {"r": None, "sigma_spec": "ddrs:0.12,0.5,10,n=256,alpha=0.001,seed=0", "n": 1000, "n0": 100,
                "alpha": 0.001, "dataset": "digits", "status": "done",
                "options": {"sigma_audit": {"audited_r": 35.0, "declared_r": None}}}
    knn_run = {"r": 0.4, "sigma_spec": "knn:0.25,0.4,20", "n": 1000, "n0": 100, "alpha": 0.001,
               "dataset": "digits", "status": "done", "options": {"sigma_audit": {"audited_r": 0.35}}}
    zero = FRAME.assign(radius=0.0)
    assert analysis.naive_only(ddrs_run) and not analysis.naive_only(knn_run)
    assert analysis.naive_only({**ddrs_run, "r": float("nan")})  # a runs() row holds NaN for NULL
    assert not analysis.naive_only({"r": None, "sigma_spec": None})  # an imported log without sigma
    table = analysis.compare_table([("#3 ddrs", ddrs_run, zero), ("#2 knn", knn_run, FRAME)], radii=(0, 0.25))
    ddrs, knn = table.iloc[0], table.iloc[1]
    assert ddrs["certificate"] == analysis.NAIVE_ONLY and pd.isna(ddrs["r"]) and ddrs["audited r"] == 35.0
    assert ddrs["R=0.25"] == 0.0 and ddrs[analysis.naive_column(0.25)] == pytest.approx(3 / 6)
    assert ddrs["R=0"] == pytest.approx(4 / 6)  # a prediction at x0 still counts at radius 0
    assert knn["certificate"] == "sound" and knn["r"] == 0.4 and knn["audited r"] == 0.35
