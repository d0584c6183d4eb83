"""Data-dependent sigma (Alfarra et al. 2022): the grid optimisation against a plain loop, its
determinism, the spec grammar, and the audit that shows it has no usable semi-elasticity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from smoothviz import bounds, ddrs
from smoothviz.audit import audit_sigma
from smoothviz.data import load_dataset
from smoothviz.errors import SigmaSpecError


class Centroid(nn.Module):
    """Nearest class mean on digits (90% test accuracy): a base classifier cheap enough to sample."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        super().__init__()
        flat = x.reshape(x.shape[0], -1)
        mu = torch.stack([flat[y == c].mean(0) for c in range(10)])
        self.register_buffer("w", 2 * mu.T)
        self.register_buffer("b", -(mu * mu).sum(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1) @ self.w + self.b


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def model(digits):
    return Centroid(digits.train_x, digits.train_y)


def test_sigma_is_the_grid_value_with_the_largest_naive_radius(digits, model) -> None:
    """A plain loop over points, grid values and samples gives the same sigma (same shared noise)."""
    sig = ddrs.build_ddrs("ddrs:0.05,1.0,8,n=100,alpha=0.01,seed=3", model)
    x = digits.test_x[:6]
    got = sig(x)
    eps = sig.noise(tuple(x.shape[1:]), x.device)
    for i in range(x.shape[0]):
        best, best_value = None, -np.inf
        for s in sig.sigmas:
            labels = [int(model((x[i] + s * eps[j])[None]).argmax()) for j in range(eps.shape[0])]
            top = max(labels.count(c) for c in set(labels))
            lower = stats.beta.ppf(0.01, top, 100 - top + 1)
            value = s * stats.norm.ppf(lower)
            if value > best_value:
                best, best_value = s, value
        assert float(got[i]) == pytest.approx(best, rel=1e-6)
    assert len(set(got.tolist())) > 1  # sigma really depends on the input
    assert sig.r is None


def test_sigma_is_a_deterministic_function_of_the_input(digits, model) -> None:
    a = ddrs.build_ddrs("ddrs:0.05,1.0,10", model)
    b = ddrs.build_ddrs("ddrs:0.05,1.0,10", model, batch_size=700)
    x = digits.test_x[:20]
    full = a(x)
    assert torch.equal(full, b(x))  # batching does not change sigma(x)
    assert torch.equal(full[5:9], a(x[5:9]))  # nor the other points of the batch
    grid = set(np.float32(ddrs.log_grid(0.05, 1.0, 10)).tolist())
    assert set(full.tolist()) <= grid and full.dtype == torch.float32


def test_objective_uses_the_clopper_pearson_lower_bound(digits, model) -> None:
    sig = ddrs.build_ddrs("ddrs:0.1,0.5,3,n=64", model)
    value = sig.objective(digits.test_x[:4])
    assert value.shape == (4, 3)
    # the radius of each grid value is at most its waterfall ceiling sigma * Phi^-1(alpha^(1/n))
    ceiling = bounds.waterfall_ceiling(np.array(sig.sigmas), 64, sig.alpha)
    assert np.all(value.numpy() <= ceiling + 1e-12)


def test_spec_round_trip_and_errors() -> None:
    parsed = ddrs.parse_ddrs_spec(" ddrs:0.05, 1.0, 10, n=200, seed=7 ")
    assert parsed == {"kind": "ddrs", "sigma_min": 0.05, "sigma_max": 1.0, "num_sigmas": 10, "n": 200,
                      "alpha": 0.001, "seed": 7}
    assert ddrs.parse_ddrs_spec(ddrs.canonical_ddrs_spec(parsed)) == parsed
    for bad in ("ddrs:", "ddrs:0.1,1", "ddrs:0.1,1,2.5", "ddrs:1,0.1,3", "ddrs:0,1,3", "ddrs:0.1,1,3,n=0",
                "ddrs:0.1,1,3,alpha=1", "ddrs:0.1,1,3,foo=1", "ddrs:0.1,1,3,n=5,n=6", "knn:0.1,1,3",
                "ddrs:x,1,3", "ddrs:n=3,0.1,1,3", "ddrs:0.1,1,3,seed=-1"):
        with pytest.raises(SigmaSpecError) as info:
            ddrs.parse_ddrs_spec(bad)
        assert "\n" not in str(info.value) and repr(bad) in str(info.value)


def test_audit_flags_ddrs_with_a_large_semi_elasticity(digits, model) -> None:
    """sigma jumps between grid values: the bisection localises a jump to ~1e-3 of the data scale."""
    sig = ddrs.build_ddrs("ddrs:0.05,1.0,10,n=128", model)
    result = audit_sigma(sig, digits.test_x[:48], train=digits.train_x, num_pairs=256, num_segments=16,
                         segment_points=8, num_perturbations=16, ascent_starts=2, refine=4)
    assert result.flagged and result.declared_r is None
    assert any("not differentiable" in note for note in result.notes)
    pair = result.pair
    assert pair.method == "bisection" and pair.sigma_x != pair.sigma_y
    # the jump is a whole grid step (or more) over a tiny distance
    step = np.log(1.0 / 0.05) / 9
    assert abs(np.log(pair.sigma_y / pair.sigma_x)) >= step * (1 - 1e-6)
    assert result.semi_elasticity > 50
    # with that r, digits' sound radius is a vanishing fraction of the naive one
    sound = float(bounds.input_dependent_radius(0.99, 0.25, result.semi_elasticity, digits.dim))
    assert sound < 0.05 * float(bounds.naive_radius(0.99, 0.25))
