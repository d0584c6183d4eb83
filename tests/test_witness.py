"""Witnesses against the naive certificate: the worst-case classifier's probabilities against an
independent 50-digit mpmath evaluation of its own set and the mpmath worst case, the likelihood-ratio
structure of the set, Monte Carlo through the engine, the search against the sound radius, and the
verification in dimension 3072."""

from __future__ import annotations

import json
import math

import mpmath as mp
import numpy as np
import pytest
import torch
from scipy import stats

import mp_reference as ref
from smoothviz import bounds, witness
from smoothviz.certify import sample_counts
from smoothviz.errors import InvalidArgument

LEVEL = 1e-6  # two-sided miss probability of every Monte Carlo interval below


def _set_probabilities(region: witness.WorstCaseSet, kappa: float, delta: float) -> tuple[float, float]:
    """P0 and P1 of the classifier's own set, at 50 digits, from its parameters (not from bounds).

    The set lin*y1 + quad*(||y||^2 - N) <= t is rewritten as (y1 - c1)^2 + w <= rho2 (quad > 0) or
    its complement; P0 = N(0, I), P1 = N(delta e1, kappa^2 I) in units of sigma0.
    """
    with mp.workdps(50):
        lin, quad, thr = (mp.mpf(v) for v in (region.lin, region.quad, region.threshold))
        n, kappa, delta = region.dim, mp.mpf(kappa), mp.mpf(delta)
        if quad == 0:
            return float(mp.ncdf(thr)), float(mp.ncdf((thr - delta) / kappa))
        c1 = -lin / (2 * quad)
        rho2 = (thr + quad * n) / quad + c1**2
        if c1**2 <= ref.POISSON_MAX_LAM:
            p0 = ref.ncx2_cdf_poisson(rho2, n, c1**2)
            p1 = ref.ncx2_cdf_poisson(rho2 / kappa**2, n, ((delta - c1) / kappa) ** 2)
        else:
            p0 = ref.set_prob_integral(rho2, c1, True, mp.mpf(0), mp.mpf(1), n)
            p1 = ref.set_prob_integral(rho2, c1, True, delta, kappa, n)
        if quad < 0:
            p0, p1 = 1 - p0, 1 - p1
        return float(p0), float(p1)


MODERATE = [  # dim, sigma0, sigma1, distance, p_a: ratios below, equal to and above 1
    (2, 0.5, 0.35, 0.4, 0.9),
    (2, 0.5, 0.5, 0.4, 0.9),
    (2, 0.5, 0.7, 0.4, 0.9),
    (64, 0.25, 0.2, 0.2, 0.99),
    (64, 0.25, 0.25, 0.2, 0.99),
    (64, 0.25, 0.3, 0.2, 0.99),
    (784, 0.25, 0.24, 0.3, 0.999),
    (784, 0.25, 0.25, 0.3, 0.999),
    (784, 0.25, 0.26, 0.3, 0.999),
    (3072, 0.25, 0.245, 0.1, 0.9),
    (3072, 0.25, 0.25, 0.1, 0.9),
    (3072, 0.25, 0.26, 0.1, 0.9),
    (3072, 0.5, 0.5 * 1.02, 0.0, 0.6),  # x1 = x0 is only for the set (no witness): centred ball
]


@pytest.mark.parametrize("dim,s0,s1,d,p", MODERATE)
def test_set_has_mass_pa_at_x0_and_the_worst_case_at_x1(dim, s0, s1, d, p) -> None:
    region = witness.worst_case_set(s0, s1, d, p, dim)
    assert region.kind == ("ball" if s1 > s0 else "complement" if s1 < s0 else "half-space")
    p0, p1 = _set_probabilities(region, s1 / s0, d / s0)
    assert p0 == pytest.approx(p, abs=1e-13)
    assert p1 == pytest.approx(ref.worst_case(s0, s1, d, p, dim), abs=1e-13)
    assert p1 == pytest.approx(float(bounds.worst_case_probability(s0, s1, d, p, dim)), abs=1e-13)
    if d > 0:
        w = witness.build_witness(dim, s0, p, d, s1)
        assert (w.p_x0, w.region) == (p, region)
        assert w.p_x1 == pytest.approx(p1, abs=1e-13)


def test_sigma1_close_to_sigma0_uses_the_integral_route_and_stays_exact() -> None:
    """Rows of the stored mpmath fixture with s1/s0 = 1 -+ 1e-4: the centre is ~1e3 sigmas away."""
    rows = [r for r in json.loads(ref.FIXTURE.read_text())
            if abs(r["sigma1"] / r["sigma0"] - 1) == pytest.approx(1e-4, rel=1e-6) and r["distance"] > 0.2
            and r["dim"] >= 784 and 0.5 < r["p_a"] < 1]
    assert {r["sigma1"] > r["sigma0"] for r in rows} == {True, False}
    for row in (min(rows, key=lambda r: r["sigma1"]), max(rows, key=lambda r: r["sigma1"])):
        s0, s1, d, p, dim = (row[k] for k in ("sigma0", "sigma1", "distance", "p_a", "dim"))
        region = witness.worst_case_set(s0, s1, d, p, dim)
        assert region.centre_offset**2 > ref.POISSON_MAX_LAM  # the huge-non-centrality regime
        p0, p1 = _set_probabilities(region, s1 / s0, d / s0)
        assert p0 == pytest.approx(p, abs=1e-12)
        assert p1 == pytest.approx(row["worst"], abs=1e-12)


def _log_ratio(z: np.ndarray, x0: np.ndarray, x1: np.ndarray, s0: float, s1: float) -> np.ndarray:
    """ln p1(z)/p0(z) for N(x1, s1^2 I) against N(x0, s0^2 I), straight from the densities."""
    n = z.shape[1]
    return (-n * math.log(s1 / s0) - ((z - x1) ** 2).sum(1) / (2 * s1**2)
            + ((z - x0) ** 2).sum(1) / (2 * s0**2))


@pytest.mark.parametrize("s1", [0.2, 0.25, 0.3])
def test_class_a_is_where_the_likelihood_ratio_is_smallest(s1: float) -> None:
    """Neyman-Pearson: every input labelled A has a smaller p1/p0 than every input labelled B."""
    w = witness.build_witness(64, 0.25, 0.99, 0.2, s1, shape=(1, 8, 8))
    gen = torch.Generator().manual_seed(5)
    # inputs on both sides of the boundary: noise of 0.4 to 1.4 sigma0 around the line through x0, x1
    scale = 0.25 * (0.4 + torch.rand((4000, 1, 1, 1), generator=gen, dtype=torch.float64))
    along = 5 * torch.rand((4000, 1, 1, 1), generator=gen, dtype=torch.float64) - 1
    z = w.x0 + along * (w.x1 - w.x0) + scale * torch.randn((4000, 1, 8, 8), generator=gen, dtype=torch.float64)
    labels = w.classifier.labels(z).numpy()
    assert 0.01 < labels.mean() < 0.99
    lr = _log_ratio(z.reshape(4000, -1).numpy(), w.x0.reshape(-1).numpy(), w.x1.reshape(-1).numpy(),
                    0.25, s1)
    assert lr[labels == witness.CLASS_A].max() <= lr[labels == witness.CLASS_B].min() + 1e-9
    # the logits agree with the labels, for float32 and float64 batches alike
    assert torch.equal(w.classifier(z).argmax(1), w.classifier.labels(z))
    assert torch.equal(w.classifier.labels(z.float()), torch.from_numpy(labels))


@pytest.mark.parametrize("dim,n,ratios", [
    (2, 20_000, (0.7, 1.0, 1.4)),
    (64, 20_000, (0.97, 1.0, 1.03)),
    (784, 8_000, (0.97, 1.0, 1.03)),
    (784, 8_000, (1 - 1e-9, 1.0, 1 + 1e-9)),  # centre ~1e8 sigmas away: the stable form matters
    (3072, 4_000, (0.97, 1.0, 1.03)),
])
def test_engine_counts_contain_both_probabilities(dim: int, n: int, ratios: tuple, one_thread) -> None:
    """f* through the engine's sample_counts: exact intervals at 1e-6 contain p_a and p_x1."""
    s0, p, d = 0.25, 0.99, 0.2
    for i, s1 in enumerate(s0 * k for k in ratios):
        w = witness.build_witness(dim, s0, p, d, s1)
        gen = torch.Generator()
        for x, sigma, want, stage in ((w.x0, s0, w.p_x0, 0), (w.x1, s1, w.p_x1, 1)):
            dtype = torch.float64 if i == 1 else torch.float32  # the classifier takes either
            counts = sample_counts(w.classifier, x[None].to(dtype), torch.tensor([sigma], dtype=dtype), n, 2, 2048,
                                   gen, seeds=[1000 * dim + 10 * i + stage])[0]
            assert int(counts.sum()) == n
            lo, hi = witness.clopper_pearson_interval(int(counts[witness.CLASS_A]), n, LEVEL)
            assert lo <= want <= hi, (dim, s1, stage, counts.tolist(), want)


def test_clopper_pearson_upper_matches_mpmath() -> None:
    """The upper bound p solves P(Binomial(n, p) <= k) = alpha (summed at 50 digits)."""
    for k, n, alpha in ((0, 10, 0.05), (3, 10, 1e-3), (490, 1000, 1e-3), (9, 10, 1e-6), (5, 100_000, 1e-6)):
        up = float(witness.clopper_pearson_upper(k, n, alpha))
        with mp.workdps(50):
            q = mp.mpf(up)
            cdf = mp.fsum(mp.binomial(n, j) * q**j * (1 - q) ** (n - j) for j in range(k + 1))
        assert float(cdf) == pytest.approx(alpha, rel=1e-9)
    assert witness.clopper_pearson_upper(7, 7, 0.01) == 1.0
    assert float(witness.clopper_pearson_upper(0, 20, 0.01)) == pytest.approx(1 - 0.01 ** (1 / 20), rel=1e-12)
    lo, hi = witness.clopper_pearson_interval([3, 50], 100, 0.01)
    assert np.all(lo == bounds.clopper_pearson_lower([3, 50], 100, 0.005))
    assert np.all(hi == witness.clopper_pearson_upper([3, 50], 100, 0.005))


CERTS = [  # p_a, sigma0, r, dim
    (0.99, 0.25, 0.1, 3072),
    (0.999, 0.25, 0.5, 784),
    (0.9, 0.5, 0.3, 64),
    (0.99, 0.5, 1.0, 2),
]


@pytest.mark.parametrize("p,s0,r,dim", CERTS)
def test_witnesses_exist_exactly_beyond_the_sound_radius(p, s0, r, dim) -> None:
    sound = float(bounds.input_dependent_radius(p, s0, r, dim))
    naive = float(bounds.naive_radius(p, s0))
    assert 0 < sound < naive
    inside = np.concatenate([np.linspace(0, sound, 40)[1:-1], sound * (1 - np.geomspace(1e-3, 1e-8, 6))])
    _, _, worst, broken = witness.band_grid(p, s0, r, dim, inside, num_sigma1=81)
    assert not broken.any() and worst.min() > 0.5
    beyond = np.concatenate([sound * (1 + np.geomspace(1e-8, 1e-3, 6)), np.linspace(sound, naive, 40)[1:-1]])
    _, s1, _, broken = witness.band_grid(p, s0, r, dim, beyond, num_sigma1=81)
    assert broken.any(axis=1).all()  # at every distance in (sound, naive) some sigma1 in the band breaks it
    assert not broken[:, 40].any()  # never sigma1 = sigma0 (Cohen's certificate holds for it)


@pytest.mark.parametrize("dim", [2, 64, 784, 3072])
def test_no_witness_for_a_constant_sigma(dim: int) -> None:
    p, s0 = 0.99, 0.25
    naive = float(bounds.naive_radius(p, s0))
    d = np.linspace(0, naive, 200)[1:-1]
    assert not witness.breaks_naive(p, s0, s0, d, dim).any()
    found = witness.search_band(p, s0, 0.0, dim)
    assert found.smallest_breaking_distance == math.inf and found.surviving_radius == naive
    _, _, _, broken = witness.band_grid(p, s0, 0.0, dim, d)
    assert not broken.any()


def test_smallest_breaking_distance_is_the_sound_radius() -> None:
    rows = CERTS + [(0.6, 0.25, 0.1, 3072), (0.9999, 0.25, 0.01, 3072)]
    p, s0, r, dim = (np.array(v) for v in zip(*rows))
    found = witness.search_band(p, s0, r, dim)
    sound = bounds.input_dependent_radius(p, s0, r, dim)
    assert found.smallest_breaking_distance == pytest.approx(sound, rel=1e-9)
    assert np.all(found.surviving_radius == found.smallest_breaking_distance)
    for i in range(p.size):
        d = float(found.smallest_breaking_distance[i])
        s1 = float(found.breaking_sigma1[i])
        assert s1 == pytest.approx(s0[i] * math.exp(r[i] * d), rel=1e-12) or s1 == pytest.approx(
            s0[i] * math.exp(-r[i] * d), rel=1e-12)
        # just beyond it a witness breaks the naive certificate; the same sigma1 ratio just inside does not
        ratio = math.log(s1 / s0[i]) / d
        out = witness.build_witness(int(dim[i]), float(s0[i]), float(p[i]), d * (1 + 1e-7),
                                    float(s0[i]) * math.exp(ratio * d * (1 + 1e-7)), r=float(r[i]))
        assert out.broken and out.admissible
        within = witness.build_witness(int(dim[i]), float(s0[i]), float(p[i]), d * (1 - 1e-7),
                                       float(s0[i]) * math.exp(ratio * d * (1 - 1e-7)), r=float(r[i]))
        assert not within.broken and within.p_x1 > 0.5


def test_search_points_finds_the_nearest_breaking_point() -> None:
    p, s0, dim = 0.99, 0.25, 784
    d = np.array([0.05, 0.3, 0.2, 0.5, 0.25, 0.7])
    s1 = s0 * np.array([1.2, 1.0, 1.1, 0.8, 1.001, 0.5])
    found = witness.search_points(p, s0, dim, d, s1)
    naive = float(bounds.naive_radius(p, s0))
    for i in range(d.size):  # each point's verdict from its own worst case
        w = float(bounds.worst_case_probability(s0, s1[i], d[i], p, dim))
        assert found.broken[i] == (d[i] < naive and w < 0.5)
    # 1: sigma1 = sigma0 (Cohen's certificate holds); 4: a 0.1% change is too small at d = 0.25;
    # 5: beyond the naive radius (0.58), so nothing was claimed there
    assert found.broken.tolist() == [True, False, True, True, False, False]
    assert found.nearest_breaking == 0 and found.smallest_breaking_distance == 0.05
    assert found.surviving_radius == 0.05
    none = witness.search_points(p, s0, dim, d[[1]], s1[[1]])
    assert none.nearest_breaking == -1 and none.surviving_radius == naive


def test_admissible_witnesses_never_break_the_sound_certificate() -> None:
    p, s0, r, dim = 0.999, 0.25, 0.2, 3072
    sound = float(bounds.input_dependent_radius(p, s0, r, dim))
    for d in np.linspace(0.01, sound, 7):
        for s1 in (s0 * math.exp(-r * d), s0 * math.exp(r * d)):
            w = witness.build_witness(dim, s0, p, d, s1, r=r)
            assert w.admissible and w.p_x1 > 0.5 and not w.broken and w.sound_radius == sound


def test_ramp_sigma_realises_the_pair() -> None:
    w = witness.build_witness(784, 0.25, 0.99, 0.3, 0.27, shape=(1, 28, 28))
    s = w.sigma_fn(torch.stack([w.x0, w.x1, 2 * w.x1 - w.x0, 2 * w.x0 - w.x1]).float())
    assert s.tolist() == pytest.approx([0.25, 0.27, 0.27, 0.25], rel=1e-6)
    assert w.sigma_fn.r == pytest.approx(math.log(0.27 / 0.25) / 0.3, rel=1e-12) == w.r
    assert w.naive_radius == pytest.approx(0.25 * stats.norm.ppf(0.99), rel=1e-12)


def test_verification_is_decisive_in_dimension_3072(one_thread) -> None:
    d = 0.386
    w = witness.build_witness(3072, 0.25, 0.999, d, 0.25 * math.exp(0.1 * d), shape=(3, 32, 32))
    assert w.broken and w.sound_radius < d < w.naive_radius
    n, alpha = 5_000, 1e-3
    plan = witness.plan_verification(w, n=n, alpha=alpha)
    assert plan.decisive and plan.failure_probability < 1e-5
    v = witness.verify(w, n=n, alpha=alpha, seed=3, batch_size=1024)
    assert sum(v.counts_x0) == n and sum(v.counts_x1) == n
    assert v.predict_x0 == witness.CLASS_A and v.confirmed
    assert v.naive_radius_issued >= plan.naive_radius_issued and v.p_a_upper_x1 <= plan.upper_x1
    assert v.p_a_lower == pytest.approx(float(bounds.clopper_pearson_lower(v.counts_x0[0], n, alpha)), rel=1e-12)
    assert v.interval_x0[0] <= w.p_a <= v.interval_x0[1] and v.interval_x1[0] <= w.p_x1 <= v.interval_x1[1]
    assert v.naive_radius_issued == pytest.approx(0.25 * stats.norm.ppf(v.p_a_lower), rel=1e-12)
    again = witness.verify(w, n=n, alpha=alpha, seed=3, batch_size=333)  # counts do not depend on batching
    assert (again.counts_x0, again.counts_x1) == (v.counts_x0, v.counts_x1)


def test_verification_refuses_too_few_samples_to_be_decisive() -> None:
    w = witness.build_witness(3072, 0.25, 0.999, 0.386, 0.25 * math.exp(0.0386))
    assert not witness.plan_verification(w, n=200).decisive  # n = 200: the lower bound at x0 is ~0.97


@pytest.mark.parametrize("kwargs,name", [
    ({"p_a": 1.0}, "p_a"), ({"p_a": 0.0}, "p_a"), ({"sigma0": 0.0}, "sigma0"), ({"sigma1": -1.0}, "sigma1"),
    ({"distance": -0.1}, "distance"), ({"distance": math.nan}, "distance"), ({"dim": 0}, "dim"),
    ({"distance": 0.0}, "distance"), ({"r": -1.0}, "r"), ({"shape": (3, 3)}, "shape"),
])
def test_bad_witness_inputs_raise_naming_the_argument(kwargs: dict, name: str) -> None:
    args = {"dim": 10, "sigma0": 0.25, "p_a": 0.9, "distance": 0.1, "sigma1": 0.3} | kwargs
    with pytest.raises(InvalidArgument, match=rf"^{name}\b"):
        witness.build_witness(**args)
