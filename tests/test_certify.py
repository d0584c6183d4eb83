"""Monte Carlo engine: counts against a slow reference loop, invariances, PREDICT, soundness."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from smoothviz import bounds, certify, noise
from smoothviz.errors import Cancelled, CheckpointError, InvalidArgument

torch.set_num_threads(1)


def tiny_cnn(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, num_classes)
    ).eval()


def reference_counts(model, x, sigma, num, num_classes, seeds, generator=None) -> np.ndarray:
    """One sample at a time, counted in Python, drawing noise in the engine's documented order."""
    g = generator if generator is not None else torch.Generator()
    out = np.zeros((x.shape[0], num_classes), dtype=np.int64)
    with torch.no_grad():
        for p in range(x.shape[0]):
            votes: Counter = Counter()
            for b, rows in enumerate(noise.block_sizes(num)):
                if seeds is not None:
                    g.manual_seed(noise.derive_seed(seeds[p], b))
                eps = torch.randn((rows, *x.shape[1:]), generator=g)
                for i in range(rows):
                    sample = x[p] + sigma[p] * eps[i]
                    votes[int(model(sample.unsqueeze(0)).argmax())] += 1
            for c, k in votes.items():
                out[p, c] = k
    return out


@pytest.fixture(scope="module")
def setup():
    model = tiny_cnn()
    torch.manual_seed(2)
    x = torch.rand(3, 1, 4, 4)
    sigma = torch.tensor([0.25, 0.5, 1.0])
    return model, x, sigma


def test_counts_match_reference_loop_seeded(setup) -> None:
    model, x, sigma = setup
    num = 2 * noise.NOISE_BLOCK + 300  # two full blocks and a partial one
    seeds = [11, 12, 13]
    engine = certify.sample_counts(model, x, sigma, num, 3, 700, torch.Generator(), seeds=seeds)
    assert engine.dtype == torch.int64 and engine.shape == (3, 3)
    assert engine.sum(1).tolist() == [num] * 3
    assert (engine.numpy() == reference_counts(model, x, sigma, num, 3, seeds)).all()


def test_counts_match_reference_loop_sequential_generator(setup) -> None:
    model, x, sigma = setup
    num = noise.NOISE_BLOCK + 77
    engine = certify.sample_counts(model, x, sigma, num, 3, 500, torch.Generator().manual_seed(5))
    ref = reference_counts(model, x, sigma, num, 3, None, torch.Generator().manual_seed(5))
    assert (engine.numpy() == ref).all()


def test_counts_do_not_depend_on_batch_size_or_neighbours(setup) -> None:
    model, x, sigma = setup
    seeds = [7, 8, 9]
    g = torch.Generator()
    runs = [certify.sample_counts(model, x, sigma, 3000, 3, bs, g, seeds=seeds) for bs in (1, 999, 10**5)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    alone = certify.sample_counts(model, x[1:2], sigma[1:2], 3000, 3, 999, g, seeds=seeds[1:2])
    assert torch.equal(alone[0], runs[0][1])
    other_seed = certify.sample_counts(model, x, sigma, 3000, 3, 999, g, seeds=[70, 80, 90])
    assert not torch.equal(other_seed, runs[0])


def test_certify_matches_reference_certify(setup) -> None:
    model, x, _ = setup
    sigma_value = 0.25
    labels, idx = [0, 1, 2], [5, 17, 40]
    n0, n, alpha, seed = 64, 1500, 0.01, 3
    results = certify.certify_points(
        model, x, labels, idx, lambda t: torch.full((t.shape[0],), sigma_value), n0, n, alpha, 3,
        batch_size=256, device="cpu", seed=seed, r=0.0, dim=16,
    )
    sig = [sigma_value] * 3
    sel = reference_counts(model, x, sig, n0, 3, [noise.derive_seed(seed, i, 0) for i in idx])
    est = reference_counts(model, x, sig, n, 3, [noise.derive_seed(seed, i, 1) for i in idx])
    for j, res in enumerate(results):
        guess = int(np.argmax(sel[j]))
        k = int(est[j, guess])
        p_a = 0.0 if k == 0 else float(stats.beta.ppf(alpha, k, n - k + 1))
        assert res.counts == est[j].tolist()
        assert res.p_a_lower == pytest.approx(p_a, rel=1e-12, abs=1e-15)
        if p_a > 0.5:
            assert res.predict == guess
            assert res.radius == pytest.approx(sigma_value * stats.norm.ppf(p_a), rel=1e-9)
            assert res.naive_radius == pytest.approx(sigma_value * stats.norm.ppf(p_a), rel=1e-12)
        else:
            assert (res.predict, res.radius, res.naive_radius) == (-1, 0.0, 0.0)
        assert res.correct == (res.predict == labels[j]) and res.idx == idx[j]


def test_chunking_does_not_change_results(setup) -> None:
    model, x, _ = setup
    args = (model, x, [0, 1, 2], [1, 2, 3], lambda t: 0.5 * torch.ones(t.shape[0]), 50, 800, 0.01, 3)
    a = certify.certify_points(*args, batch_size=97, device="cpu", seed=1, r=0.0, dim=16, chunk_points=1)
    b = certify.certify_points(*args, batch_size=5000, device="cpu", seed=1, r=0.0, dim=16)
    assert [r.counts for r in a] == [r.counts for r in b]
    # the radius solver works on the chunk's points together; it may differ in the last ulp
    assert [r.radius for r in a] == pytest.approx([r.radius for r in b], rel=1e-12)


class CoinFlip(nn.Module):
    """Class 0 or 1 with probability 1/2 each under any isotropic noise (sign of one coordinate)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1)[:, :1] - 0.5
        return torch.cat([z, -z, torch.full_like(z, -1e9)], dim=1)


def test_predict_abstains_on_a_coin_flip_and_not_on_a_clear_margin() -> None:
    x = torch.full((30, 1, 2, 2), 0.5)  # exactly on the coin-flip boundary
    flat = lambda t: torch.full((t.shape[0],), 0.5)  # noqa: E731
    res = certify.predict_points(CoinFlip(), x, [0] * 30, list(range(30)), flat, 2000, 0.001, 3, 4096, "cpu", 0)
    assert [r.predict for r in res] == [-1] * 30
    assert all(r.count_a + r.count_b == 2000 and r.p_value > 0.001 for r in res)
    clear = torch.full((5, 1, 2, 2), 3.0)  # z = 2.5 = 5 sigma: class 0 nearly always
    res = certify.predict_points(CoinFlip(), clear, [0] * 5, list(range(5)), flat, 2000, 0.001, 3, 4096, "cpu", 0)
    assert [r.predict for r in res] == [0] * 5 and all(r.correct for r in res)
    cert = certify.certify_points(CoinFlip(), x[:10], [0] * 10, list(range(10)), flat, 100, 2000, 0.001, 3,
                                  4096, "cpu", 0, 0.0, 4)
    assert [r.predict for r in cert] == [-1] * 10 and all(r.p_a_lower < 0.5 for r in cert)


def _cp_upper(k: int, m: int, alpha: float) -> float:
    return 1.0 if k == m else float(stats.beta.ppf(1 - alpha, k + 1, m - k))


def _cp_lower(k: int, m: int, alpha: float) -> float:
    return 0.0 if k == 0 else float(stats.beta.ppf(alpha, k, m - k + 1))


class HalfPlane(nn.Module):
    """f(x) = 1 iff x_0 > 0 in 2-D: g's true robust radius at x is |x_0| for any sigma(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([-x[:, 0], x[:, 0]], dim=1)


@pytest.mark.parametrize("r", [0.0, 0.4])
def test_wrong_certificates_stay_below_alpha(r: float) -> None:
    """Simulation: certificates exceeding the true robust radius (or naming the wrong class)."""
    alpha, m = 0.1, 1500
    rng = np.random.default_rng(0)
    d = rng.uniform(-0.6, 0.6, m)
    x = torch.tensor(np.stack([d, rng.normal(size=m)], axis=1), dtype=torch.float32)
    labels = (d > 0).astype(int).tolist()

    def sigma_fn(t: torch.Tensor) -> torch.Tensor:  # r-semi-elastic: ||x|| is 1-Lipschitz
        return 0.5 * torch.exp(r * (t.norm(dim=1) - 1.0))

    res = certify.certify_points(HalfPlane(), x, labels, list(range(m)), sigma_fn, 30, 200, alpha, 2,
                                 batch_size=50_000, device="cpu", seed=4, r=r, dim=2)
    true_radius = np.abs(d)
    wrong = sum(p.predict != -1 and (not p.correct or p.radius > true_radius[j]) for j, p in enumerate(res))
    certified = sum(p.predict != -1 for p in res)
    assert certified > m / 3  # the test is not vacuous
    # The observed rate may exceed alpha by chance; its (1 - 1e-6) lower confidence bound may not.
    assert _cp_lower(wrong, m, 1e-6) <= alpha, (wrong, m)
    # Power check: certifying the point estimate p_hat instead of the lower bound fails badly.
    p_hat = np.array([max(p.counts) / 200 for p in res])
    sig = np.array([p.sigma for p in res])
    with np.errstate(divide="ignore"):
        naive_hat = np.where(p_hat > 0.5, sig * stats.norm.ppf(np.minimum(p_hat, 1 - 1e-12)), 0.0)
    wrong_hat = int(np.sum((p_hat > 0.5) & (naive_hat > true_radius)))
    print(f"r={r}: {wrong} wrong of {m} ({certified} certified); p_hat version: {wrong_hat}")
    assert _cp_upper(wrong_hat, m, 1e-6) > alpha and wrong_hat / m > 2 * alpha


def test_cancel_raises_after_completed_points_are_yielded(setup) -> None:
    model, x, _ = setup
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    got = []
    with pytest.raises(Cancelled):
        for res in certify.iter_certify(model, x, [0, 1, 2], [0, 1, 2], lambda t: torch.ones(t.shape[0]),
                                        10, 100, 0.01, 3, batch_size=110, device="cpu", seed=0, r=0.0,
                                        dim=16, cancel=cancel, chunk_points=1):
            got.append(res)
    assert [r.idx for r in got] == [0, 1]


def test_progress_reports_reach_total(setup) -> None:
    model, x, _ = setup
    seen = []
    certify.certify_points(model, x, [0, 1, 2], [0, 1, 2], lambda t: torch.ones(t.shape[0]), 10, 300, 0.01,
                           3, batch_size=64, device="cpu", seed=0, r=0.0, dim=16, progress=seen.append,
                           chunk_points=2)
    assert seen[-1]["done"] == 3 and seen[-1]["total"] == 3 and seen[-1]["eta"] == 0
    assert [s["done"] for s in seen] == sorted(s["done"] for s in seen)
    assert any(0 < s["samples"] < 930 for s in seen)  # reported within a chunk, not only at its end


@pytest.mark.parametrize(("n0", "n", "alpha", "bs"), [(200, 100, 0.01, 10), (10, 100, 1.0, 10),
                                                      (10, 100, 0.0, 10), (10, 100, 0.01, 0)])
def test_invalid_arguments(setup, n0, n, alpha, bs) -> None:
    model, x, _ = setup
    with pytest.raises(InvalidArgument):
        certify.certify_points(model, x, [0, 1, 2], [0, 1, 2], lambda t: torch.ones(t.shape[0]), n0, n, alpha,
                               3, bs, "cpu", 0, 0.0, 16)


def test_bad_sigma_values_are_rejected(setup) -> None:
    model, x, _ = setup
    with pytest.raises(InvalidArgument, match="sigma"):
        certify.certify_points(model, x, [0, 1, 2], [0, 1, 2], lambda t: torch.zeros(t.shape[0]), 10, 100,
                               0.01, 3, 64, "cpu", 0, 0.0, 16)
    assert math.isfinite(bounds.waterfall_ceiling(0.25, 100, 0.01))


def test_labels_outside_the_classes_are_reported(setup) -> None:
    model, x, _ = setup  # 3 outputs, but told there are 4 classes: sums still fit
    wide = certify.certify_points(model, x, [0, 1, 2], [0, 1, 2], lambda t: torch.ones(t.shape[0]), 10, 50, 0.01,
                                  4, 64, "cpu", 0, 0.0, 16)
    assert all(sum(r.counts) == 50 and r.counts[3] == 0 for r in wide)
    with pytest.raises(CheckpointError, match="num_classes"):  # told 2 classes: label 2 does not fit
        certify.certify_points(model, x, [0, 1, 1], [0, 1, 2], lambda t: torch.ones(t.shape[0]), 10, 200, 0.01,
                               2, 64, "cpu", 0, 0.0, 16)
    spilled = certify.sample_counts(model, x, torch.ones(3), 200, 2, 64, torch.Generator(), seeds=[1, 2, 3])
    full = certify.sample_counts(model, x, torch.ones(3), 200, 3, 64, torch.Generator(), seeds=[1, 2, 3])
    assert torch.equal(spilled, full[:, :2])  # votes for class 2 are not counted for another point
