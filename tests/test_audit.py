"""Semi-elasticity audit: a lower bound on r that never exceeds a proven r, gets close to it on
digits for the paper's kNN sigma, and flags a declared r that is too small."""

from __future__ import annotations

import math

import pytest
import torch

from smoothviz import witness
from smoothviz.audit import audit_sigma
from smoothviz.data import load_dataset
from smoothviz.errors import InvalidArgument
from smoothviz.sigma import KNN, Constant

R = 0.4  # the shipped digits kNN checkpoints' semi-elasticity (knn:0.25,0.4,20)
FAST = {"num_pairs": 512, "num_segments": 32, "num_perturbations": 64, "ascent_starts": 8,
        "ascent_steps": 20, "refine": 4}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def knn(digits):
    return KNN(digits.train_x, 0.25, R, 20)


def _ratio(sigma_fn, x: torch.Tensor, y: torch.Tensor) -> float:
    s = sigma_fn(torch.stack([x, y])).double()
    return abs(math.log(float(s[0]) / float(s[1]))) / float(torch.linalg.vector_norm((x - y).double()))


def test_knn_audits_below_and_near_its_proven_r(digits, knn, one_thread) -> None:
    """kNN is provably R-semi-elastic (the mean kNN distance is 1-Lipschitz): the audit stays at or
    below R, and its pair really gives the ratio reported (recomputed here without the allowance)."""
    result = audit_sigma(knn, digits.test_x[:128], train=digits.train_x, seed=1, **FAST)
    assert result.semi_elasticity <= R
    assert result.semi_elasticity >= 0.8 * R  # measured 0.88 R with these settings
    assert not result.flagged and result.declared_r == R
    pair = result.pair
    assert pair is not None and pair.distance >= 1e-3 * 0.5
    assert pair.ratio <= _ratio(knn, pair.x, pair.y) <= R * (1 + 1e-4)
    assert set(result.by_method) >= {"random pairs", "segments", "perturbations", "gradient ascent"}
    assert result.by_method["gradient ascent"] > result.by_method["random pairs"]  # the ascent helps
    assert result.notes == []


def test_a_declared_r_below_the_audit_is_flagged(digits, knn, one_thread) -> None:
    half = audit_sigma(knn, digits.test_x[:128], train=digits.train_x, seed=1, declared_r=R / 2, **FAST)
    assert half.flagged and half.declared_r == R / 2 and half.semi_elasticity > R / 2


def test_clipping_keeps_the_audit_below_r(digits, one_thread) -> None:
    clipped = KNN(digits.train_x, 0.25, R, 20, sigma_min=0.2, sigma_max=0.3)
    result = audit_sigma(clipped, digits.test_x[:64], train=digits.train_x, **FAST)
    assert 0 < result.semi_elasticity <= R and not result.flagged


def test_exactly_known_semi_elasticity_is_reached() -> None:
    """sigma(x) = 0.3 exp(r <x, v>) has semi-elasticity exactly r (attained along v)."""
    r = 1.7
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(20, generator=gen, dtype=torch.float64)
    v /= torch.linalg.vector_norm(v)

    def sigma_fn(x: torch.Tensor) -> torch.Tensor:
        return 0.3 * torch.exp(r * (x.reshape(x.shape[0], -1).double() @ v.to(x.device))).float()

    data = torch.rand((50, 20), generator=gen)
    result = audit_sigma(sigma_fn, data, declared_r=r, ascent_starts=4, ascent_steps=3)
    assert 0.99 * r <= result.semi_elasticity <= r and not result.flagged
    assert result.pair.method in ("gradient ascent", "bisection")
    assert audit_sigma(sigma_fn, data, declared_r=0.9 * r, ascent_starts=4, ascent_steps=3).flagged


def test_the_witness_ramp_sigma_audits_at_its_r() -> None:
    w = witness.build_witness(64, 0.25, 0.99, 0.3, 0.3)
    along = torch.linspace(0, 1, 16, dtype=torch.float64)[:, None]
    data = (w.x0 + along * (w.x1 - w.x0)).float()
    result = audit_sigma(w.sigma_fn, data, ascent_steps=0)
    assert 0.99 * w.r <= result.semi_elasticity <= w.r and not result.flagged


def test_constant_sigma_audits_at_zero(digits) -> None:
    result = audit_sigma(Constant(0.25), digits.test_x[:32], ascent_starts=2, ascent_steps=2)
    assert result.semi_elasticity == 0.0 and result.pair is None and not result.flagged
    assert any("not differentiable" in note for note in result.notes)  # a constant has no graph


def test_no_declared_r_is_flagged(digits) -> None:
    def sigma_fn(x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), 0.25)

    assert audit_sigma(sigma_fn, digits.test_x[:16], ascent_steps=0).flagged  # nothing declares r


def test_bad_inputs_raise(digits) -> None:
    with pytest.raises(InvalidArgument, match="at least two"):
        audit_sigma(Constant(0.25), digits.test_x[:1])
    with pytest.raises(InvalidArgument, match="one finite value > 0"):
        audit_sigma(lambda x: -torch.ones(x.shape[0]), digits.test_x[:8])
    with pytest.raises(InvalidArgument, match="distinct"):
        audit_sigma(Constant(0.25), torch.zeros((5, 3)))


def test_audit_record_and_the_warning_for_a_run(digits, knn, one_thread) -> None:
    from smoothviz.audit import audit_record, audit_warning

    result = audit_sigma(knn, digits.test_x[:64], train=digits.train_x, seed=1, declared_r=R / 2, **FAST)
    record = audit_record(result, points=64, seed=1)
    assert record["audited_r"] == result.semi_elasticity and record["flagged"] is True
    assert record["points"] == 64 and record["pair"]["distance"] == result.pair.distance
    run = {"r": R / 2, "options": {"sigma_audit": record}}
    warning = audit_warning(run)
    assert warning is not None and f"{record['audited_r']:.4g}" in warning and "r = 0.2" in warning
    assert audit_warning({"r": R, "options": {"sigma_audit": record}}) is None  # below the proven r
    naive = audit_warning({"r": None, "options": {"sigma_audit": record}})  # naive only: Cohen's formula, r = 0
    assert naive is not None and "constant sigma (r = 0)" in naive
    assert audit_warning({"r": None, "options": {"sigma_audit": {**record, "audited_r": 0.0}}}) is None
    assert audit_warning({"r": R / 2, "options": {}}) is None
