"""2-D playground data: grids, smoothed maps against the analytic smoothing of a linear classifier,
sigma maps against brute force, certified circles against the bounds module and Cohen's formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from smoothviz import bounds, playground
from smoothviz.data import load_dataset
from smoothviz.errors import InvalidArgument
from smoothviz.sigma import build_sigma


@pytest.fixture(scope="module")
def moons():
    return load_dataset("toy2d-moons")


@pytest.fixture(scope="module")
def mlp(moons, tmp_path_factory):
    model, meta = playground.fit_toy_model(moons, "constant:0.05", tmp_path_factory.mktemp("pg"), seed=0, epochs=20)
    return model, meta


def threshold_model(t: float = 0.5, scale: float = 1.0) -> torch.nn.Module:
    """f(x) = 1 if x1 > t else 0, as a linear layer (logit difference 2*scale*(x1 - t))."""
    lin = torch.nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[-scale, 0.0], [scale, 0.0]]))
        lin.bias.copy_(torch.tensor([scale * t, -scale * t]))
    return lin.eval()


def test_grid_layout_and_extent(moons):
    grid = playground.make_grid(moons, resolution=25)
    assert grid.shape == (25, 25) and grid.points.shape == (625, 2)
    i, j = 7, 11
    np.testing.assert_allclose(grid.points[i * 25 + j].numpy(), [grid.xs[j], grid.ys[i]], rtol=1e-6)
    pts = torch.cat([moons.train_x, moons.test_x]).numpy()
    assert grid.xs[0] < pts[:, 0].min() and grid.xs[-1] > pts[:, 0].max()
    assert grid.ys[0] < pts[:, 1].min() and grid.ys[-1] > pts[:, 1].max()


def test_image_dataset_is_rejected():
    digits = load_dataset("digits")
    with pytest.raises(InvalidArgument, match="2-D"):
        playground.make_grid(digits)


def test_smoothed_map_matches_analytic_smoothing_of_a_threshold(moons):
    """For f = [x1 > t], P(f(x+eps) = 1) = Phi((x1 - t)/sigma): the top class must match where the
    probability is clear of 1/2, and the Clopper-Pearson bound must lie below the true p_A."""
    sigma, n, alpha = 0.15, 500, 1e-6  # tiny alpha: P(any of 900 bounds above truth) <= 1e-3
    grid = playground.make_grid(moons, resolution=30)
    t = float(grid.xs[15])  # one grid column sits exactly on the boundary
    sm = playground.smoothed_regions(
        threshold_model(t), grid, build_sigma(f"constant:{sigma}"), 2, n=n, alpha=alpha, seed=1
    )
    x1 = grid.points[:, 0].double().numpy().reshape(grid.shape)
    p1 = norm.cdf((x1 - t) / sigma)
    p_top = np.maximum(p1, 1 - p1)
    clear = np.abs(p1 - 0.5) > 0.15
    np.testing.assert_array_equal(sm.top[clear], (p1[clear] > 0.5).astype(int))
    assert np.all(sm.p_a_lower <= p_top + 1e-12)
    assert np.mean(p_top - sm.p_a_lower) < 0.08  # and not uselessly loose
    # abstain exactly where the bound is not above 1/2, never where p_A is far above it
    np.testing.assert_array_equal(sm.pred == -1, sm.p_a_lower <= 0.5)
    assert not np.any(sm.pred[p_top > 0.9] == -1)
    near_half = np.abs(p1 - 0.5) < 0.03  # bound <= p_hat - 0.1 at n = 500, alpha = 1e-6
    assert near_half.any() and np.all(sm.pred[near_half] == -1)


def test_smoothed_equals_base_for_tiny_sigma(moons, mlp):
    model, meta = mlp
    assert meta["dataset"] == "toy2d-moons" and meta["clean_accuracy"] > 0.8
    grid = playground.make_grid(moons, resolution=40)
    base = playground.base_regions(model, grid)
    sm = playground.smoothed_regions(model, grid, build_sigma("constant:1e-5"), 2, n=100, alpha=0.001, seed=0)
    # cells next to a base-classifier boundary may flip; every other cell must agree exactly
    pad = np.pad(base, 1, mode="edge")
    near = np.zeros_like(base, dtype=bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            near |= pad[1 + di : 1 + di + base.shape[0], 1 + dj : 1 + dj + base.shape[1]] != base
    np.testing.assert_array_equal(sm.pred[~near], base[~near])
    assert np.mean(sm.pred == base) > 0.98


def test_smoothed_map_is_reproducible(moons, mlp):
    model, _ = mlp
    grid = playground.make_grid(moons, resolution=20)
    fn = build_sigma("knn:0.1,4,10", moons.train_x)
    a = playground.smoothed_regions(model, grid, fn, 2, n=200, seed=5)
    b = playground.smoothed_regions(model, grid, fn, 2, n=200, seed=5)
    np.testing.assert_array_equal(a.top, b.top)
    np.testing.assert_array_equal(a.p_a_lower, b.p_a_lower)


def test_sigma_map_matches_brute_force_knn(moons):
    fn = build_sigma("knn:0.1,4,10", moons.train_x)
    grid = playground.make_grid(moons, resolution=15)
    smap = playground.sigma_map(fn, grid)
    assert smap.shape == (15, 15)
    train = moons.train_x.double().numpy()
    for i, j in ((0, 0), (7, 3), (14, 14), (5, 12)):
        p = np.array([grid.xs[j], grid.ys[i]])
        d = np.sort(np.sqrt(((train - p) ** 2).sum(axis=1)))[:10].mean()
        assert smap[i, j] == pytest.approx(0.1 * np.exp(4 * (d - fn.m)), rel=1e-4)
    assert smap.max() > 2 * smap.min()  # off the data sigma grows


def test_certified_circles_match_bounds(moons, mlp):
    model, _ = mlp
    pts = [0, 3, 10]
    fn = build_sigma("knn:0.1,4,10", moons.train_x)
    cert = playground.certify_selected(model, moons, pts, fn, n0=50, n=5000, alpha=0.001, seed=0)
    assert [c.idx for c in cert] == pts
    certified = [c for c in cert if c.predict >= 0]
    assert certified, "the trained MLP should certify some of these points"
    for c in cert:
        np.testing.assert_allclose([c.x, c.y], moons.test_x[c.idx].numpy(), rtol=1e-6)
        assert c.label == int(moons.test_y[c.idx])
        assert c.sigma == pytest.approx(float(fn(moons.test_x[c.idx : c.idx + 1])[0]), rel=1e-5)
    for c in certified:
        sound = float(bounds.input_dependent_radius(c.p_a_lower, c.sigma, 4.0, 2))
        assert c.radius == pytest.approx(sound, rel=1e-9)
        assert c.naive_radius == pytest.approx(c.sigma * norm.ppf(c.p_a_lower), rel=1e-7)
        assert c.radius < c.naive_radius
        circle = c.circle()
        assert circle == {"x": c.x, "y": c.y, "radius": c.radius, "naive_radius": c.naive_radius}

    const = playground.certify_selected(model, moons, pts, build_sigma("constant:0.1"), n0=50, n=5000, seed=0)
    for c in const:
        if c.predict >= 0:
            assert c.radius == pytest.approx(0.1 * norm.ppf(c.p_a_lower), rel=1e-7)  # Cohen et al. 2019


def test_certify_selected_rejects_bad_indices(moons, mlp):
    with pytest.raises(InvalidArgument, match="test indices"):
        playground.certify_selected(mlp[0], moons, [0, 10_000], build_sigma("constant:0.1"))
    assert playground.certify_selected(mlp[0], moons, [], build_sigma("constant:0.1")) == []


def test_fit_toy_model_reuses_an_identical_training(moons, mlp, tmp_path):
    _, meta1 = playground.fit_toy_model(moons, "constant:0.05", tmp_path, seed=0, epochs=2)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    _, meta2 = playground.fit_toy_model(moons, "constant:0.05", tmp_path, seed=0, epochs=2)
    assert files[0].stat().st_mtime_ns == mtime and meta2["created"] == meta1["created"]


def test_indices_from_selection():
    pts = [
        {"customdata": 4, "x": 0.1},
        {"customdata": [7]},
        {"customdata": 4},  # duplicate
        {"x": 0.3},  # a trace without ids (e.g. the certified-point markers)
        {"customdata": 2.5},  # not an index
        {"customdata": True},
        {"customdata": 9.0},
    ]
    assert playground.indices_from_selection(pts) == [4, 7, 9]
    assert playground.indices_from_selection(pts, limit=2) == [4, 7]
    assert playground.indices_from_selection([]) == []
