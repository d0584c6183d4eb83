"""Sigma functions: spec parsing, kNN distances against a brute-force numpy reference, chunking
under a memory bound, the default m, and the semi-elasticity bound (Sukenik et al. 2022, Sec. 6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smoothviz import sigma as sigma_mod
from smoothviz.errors import SigmaSpecError
from smoothviz.sigma import KNN, Constant, build_sigma, canonical_spec, parse_sigma_spec


def _brute_mean_knn(x: np.ndarray, train: np.ndarray, k: int, exclude_self: bool = False):
    """Mean distance to the k nearest training rows, float64, by full sort."""
    d = np.sqrt(((x[:, None, :].astype(np.float64) - train[None, :, :]) ** 2).sum(-1))
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


@pytest.fixture(scope="module")
def cloud():
    rng = np.random.default_rng(0)
    train = rng.random((300, 12)).astype(np.float32)
    test = rng.random((70, 12)).astype(np.float32)
    return train, test


def test_parse_constant_and_knn():
    assert parse_sigma_spec("constant:0.25") == {"kind": "constant", "sigma": 0.25}
    assert parse_sigma_spec(" knn:0.25, 0.01, 20 ") == {
        "kind": "knn", "sigma_b": 0.25, "r": 0.01, "k": 20, "m": None,
        "sigma_min": None, "sigma_max": None}
    parsed = parse_sigma_spec("knn:0.5,0.2,5,m=-1.5,min=0.1,max=0.9")
    assert (parsed["m"], parsed["sigma_min"], parsed["sigma_max"]) == (-1.5, 0.1, 0.9)
    assert parse_sigma_spec(canonical_spec(parsed)) == parsed


@pytest.mark.parametrize("spec", [
    "", "0.25", "constant", "constant:", "constant:abc", "constant:-0.1", "constant:0",
    "constant:nan", "constant:inf", "constant:0.1,0.2", "gauss:0.25", "knn:0.25,0.01",
    "knn:0.25,0.01,20,30", "knn:-0.25,0.01,20", "knn:0.25,-0.01,20", "knn:0.25,0.01,0",
    "knn:0.25,0.01,2.5", "knn:0.25,0.01,x", "knn:0.25,nan,20", "knn:0.25,0.01,20,foo=1",
    "knn:0.25,0.01,20,m=1,m=2", "knn:0.25,0.01,20,min=0.5,max=0.1", "knn:0.25,0.01,20,min=-1",
    "knn:0.25,0.01,20,m=inf", "knn:m=1,0.25,0.01,20",
])
def test_bad_specs_raise_one_line_errors(spec):
    with pytest.raises(SigmaSpecError) as info:
        parse_sigma_spec(spec)
    assert "\n" not in str(info.value) and repr(spec) in str(info.value)


def test_k_larger_than_training_set_and_missing_training_data(cloud):
    train, _ = cloud
    with pytest.raises(SigmaSpecError, match="exceeds the 299 other training points"):
        build_sigma("knn:0.25,0.1,301", torch.from_numpy(train))
    with pytest.raises(SigmaSpecError, match="needs the training data"):
        build_sigma("knn:0.25,0.1,5")


def test_constant_sigma():
    s = build_sigma("constant:0.3")
    assert isinstance(s, Constant) and s.r == 0.0 and s.spec == "constant:0.3"
    out = s(torch.zeros(4, 1, 8, 8))
    assert out.shape == (4,) and torch.all(out == torch.tensor(0.3, dtype=torch.float32))
    assert s.params() == {"kind": "constant", "sigma": 0.3}


@pytest.mark.parametrize("chunk_size", [3, 64, 1000, None])
def test_mean_distance_matches_brute_force_for_any_chunking(cloud, chunk_size):
    train, test = cloud
    test = test[:20]  # blocks of 3 distances (fewer than k) mean many merge steps
    s = KNN(torch.from_numpy(train), 0.25, 0.1, k=5, m=0.0, chunk_size=chunk_size)
    got = s.mean_distance(torch.from_numpy(test)).numpy()
    np.testing.assert_allclose(got, _brute_mean_knn(test, train, 5), rtol=0, atol=2e-5)


def test_default_m_is_training_mean_with_self_excluded(cloud):
    train, _ = cloud
    s = KNN(torch.from_numpy(train), 0.25, 0.1, k=4, chunk_size=50)
    reference = _brute_mean_knn(train, train, 4, exclude_self=True)
    assert s.m == pytest.approx(reference.mean(), abs=2e-5)
    np.testing.assert_allclose(s.training_mean_distance().numpy(), reference, atol=2e-5)
    # Without the exclusion each point would count itself at distance 0: a smaller value.
    assert s.m > _brute_mean_knn(train, train, 4).mean() + 1e-3


def test_self_exclusion_is_by_index_so_duplicates_still_count(cloud):
    train, _ = cloud
    dup = np.concatenate([train[:50], train[:1]])  # point 0 appears twice
    s = KNN(torch.from_numpy(dup), 0.25, 0.1, k=3)
    reference = _brute_mean_knn(dup, dup, 3, exclude_self=True)
    np.testing.assert_allclose(s.training_mean_distance().numpy(), reference, atol=2e-5)
    assert reference[0] < _brute_mean_knn(dup[:50], dup[:50], 3, exclude_self=True)[0]


def test_sigma_follows_the_paper_formula_and_clipping(cloud):
    train, test = cloud
    t = torch.from_numpy(train)
    s = build_sigma("knn:0.25,0.8,5,min=0.22,max=0.27", t)
    d = _brute_mean_knn(test, train, 5)
    expected = np.clip(0.25 * np.exp(0.8 * (d - s.m)), 0.22, 0.27)
    np.testing.assert_allclose(s(torch.from_numpy(test)).numpy(), expected, rtol=1e-5)
    assert s.r == 0.8 and expected.min() == 0.22 and expected.max() == 0.27  # both clips active


def test_canonical_spec_reproduces_the_function_without_recomputing_m(cloud, monkeypatch):
    train, test = cloud
    t = torch.from_numpy(train)
    s = build_sigma("knn:0.25,0.3,5", t)
    assert s.spec.startswith("knn:0.25,0.3,5,m=")

    def forbidden(self):
        raise AssertionError("m must come from the spec")

    monkeypatch.setattr(KNN, "training_mean_distance", forbidden)
    again = build_sigma(s.spec, t)
    assert again.m == s.m and again.params() == s.params()
    x = torch.from_numpy(test)
    assert torch.equal(again(x), s(x))


@pytest.mark.parametrize("spec", ["knn:0.25,0.5,5", "knn:0.25,2.0,5,min=0.2,max=0.35",
                                  "knn:0.1,5.0,1"])
def test_semi_elasticity_holds_on_random_and_near_pairs(cloud, spec):
    """|ln s(x) - ln s(y)| <= r ||x - y||: the property the sound certificate relies on."""
    train, _ = cloud
    s = build_sigma(spec, torch.from_numpy(train))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(400, 12, generator=gen)
    y = torch.cat([torch.rand(200, 12, generator=gen),
                   x[200:] + 0.01 * torch.randn(200, 12, generator=gen)])
    # Also pairs that start next to a training point (where the kNN set changes).
    x[:20] = torch.from_numpy(train[:20]) + 0.001
    lhs = (torch.log(s(x).double()) - torch.log(s(y).double())).abs()
    rhs = s.r * torch.linalg.vector_norm((x - y).double(), dim=1)
    assert torch.all(lhs <= rhs + 1e-5)


def test_semi_elasticity_is_attained_moving_away_from_the_data(cloud):
    """Far from the data every neighbour distance grows by the step: the bound r is tight."""
    train, _ = cloud
    s = build_sigma("knn:0.25,0.5,5", torch.from_numpy(train))
    center = torch.from_numpy(train).mean(dim=0)
    u = torch.nn.functional.normalize(torch.randn(50, 12, generator=torch.Generator().manual_seed(2)))
    x, y = center + 20 * u, center + 20.1 * u
    ratio = (torch.log(s(y).double()) - torch.log(s(x).double())) / (s.r * 0.1)
    assert torch.all(ratio <= 1 + 1e-4) and torch.all(ratio > 0.99)


def test_chunks_stay_within_the_memory_bound(cloud, monkeypatch):
    train, test = cloud
    shapes = []
    real_cdist = torch.cdist

    def recording(a, b, *args, **kwargs):
        shapes.append((a.shape[0], b.shape[0]))
        return real_cdist(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "cdist", recording)
    s = KNN(torch.from_numpy(train), 0.25, 0.1, k=5, m=0.0, chunk_size=120)
    got = s.mean_distance(torch.from_numpy(test))
    assert shapes and max(p * t for p, t in shapes) <= 120
    assert sum(p * t for p, t in shapes) == 70 * 300  # every pair exactly once
    np.testing.assert_allclose(got.numpy(), _brute_mean_knn(test, train, 5), atol=2e-5)


def test_cifar_scale_blocks_fit_the_default_budget():
    """10,000 CIFAR-sized points against 50,000 training points: blocks of <= 256 MiB on CPU."""
    entries = sigma_mod.default_chunk_size(torch.device("cpu"))
    train_chunk = min(50_000, sigma_mod._MAX_TRAIN_CHUNK, entries)
    point_chunk = max(1, entries // train_chunk)
    assert point_chunk * train_chunk * sigma_mod._BYTES_PER_ENTRY <= 256 * 2**20
    assert math.ceil(10_000 / point_chunk) * math.ceil(50_000 / train_chunk) < 100


def test_output_stays_on_the_input_device_and_dtype(cloud):
    train, test = cloud
    s = build_sigma("knn:0.25,0.1,5", torch.from_numpy(train), device="cpu")
    out = s(torch.from_numpy(test).reshape(70, 3, 2, 2))
    assert out.shape == (70,) and out.dtype == torch.float32 and out.device == torch.device("cpu")


def test_values_outside_the_limits_are_refused_naming_the_point():
    sigma_mod.check_sigma_values(torch.tensor([1e-6, 0.25, 100.0]), "constant:0.25")  # limits included
    sigma_mod.check_sigma_values(torch.tensor([1e-6], dtype=torch.float32), "x")  # float32 rounds 1e-6 down
    for bad, shown in ((float("inf"), "inf"), (float("nan"), "nan"), (0.0, "0"), (101.0, "101"), (1e-7, "1e-07")):
        with pytest.raises(SigmaSpecError, match=rf"sigma\(x\) = {shown} at point 17 is outside \[1e-06, 100\] "
                                                 r"\(1 of 3 points\)"):
            sigma_mod.check_sigma_values([0.25, bad, 0.3], "knn:0.25,1000,20", [5, 17, 40])


def test_knn_with_a_huge_r_gives_values_the_check_refuses(cloud):
    train, test = cloud
    fn = KNN(torch.from_numpy(train), 0.25, 1000.0, k=5)
    values = fn(torch.from_numpy(test))
    assert not bool(((values >= sigma_mod.SIGMA_MIN) & (values <= sigma_mod.SIGMA_MAX)).all())
    with pytest.raises(SigmaSpecError, match="is outside"):
        sigma_mod.check_sigma_values(values, fn.spec)


def test_span_warning_flags_absurd_spans_and_values_at_the_limits():
    assert sigma_mod.span_warning(torch.tensor([0.2, 0.3, 0.45])) is None
    assert sigma_mod.span_warning([0.01, 0.99]) is None  # a factor of 99 is still below the threshold
    wide = sigma_mod.span_warning([0.001, 0.2, 0.5])
    assert "a factor of 500" in wide and "0.001 to 0.5" in wide and "limit" not in wide
    at_max = sigma_mod.span_warning([50.0, 100.0])
    assert at_max is not None and "reaching the limit 100" in at_max
    both = sigma_mod.span_warning([1e-6, 100.0])
    assert "the limit 1e-06 and the limit 100" in both
    assert sigma_mod.span_warning([]) is None


def test_span_warning_on_digits_with_r_100_clipped():
    from smoothviz.data import load_dataset

    ds = load_dataset("digits")
    fn = build_sigma("knn:0.25,100,20,min=1e-6,max=100", ds.train_x)
    values = fn(ds.test_x[:60])
    sigma_mod.check_sigma_values(values, fn.spec)  # clipped into the limits: allowed ...
    assert "spans" in sigma_mod.span_warning(values)  # ... but warned about
    assert sigma_mod.span_warning(build_sigma("knn:0.25,0.4,20", ds.train_x)(ds.test_x[:60])) is None


def test_knn_k_leaves_one_out_when_m_comes_from_the_training_set():
    """With m computed from the data every training point skips itself: k = n_train has no k-th neighbour."""
    train = torch.rand(12, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(SigmaSpecError, match="k=12 exceeds the 11 other training points"):
        KNN(train, 0.25, 0.1, k=12)
    fixed = KNN(train, 0.25, 0.1, k=12, m=1.0)  # a given m needs no leave-one-out distances
    assert torch.isfinite(fixed(train[:3])).all()
    assert torch.isfinite(KNN(train, 0.25, 0.1, k=11)(train[:3])).all()


def test_ddrs_specs_parse_round_trip_and_build_only_with_a_model():
    """ddrs (data-dependent sigma) is a registered kind: parsed with its defaults, canonical spec
    round trip, r None (naive certificate only), and a model is required to build it."""
    from torch import nn

    from smoothviz.ddrs import DataDependentSigma

    parsed = parse_sigma_spec(" DDRS:0.12,0.5,10,seed=3 ")
    assert parsed == {"kind": "ddrs", "sigma_min": 0.12, "sigma_max": 0.5, "num_sigmas": 10, "n": 256,
                      "alpha": 0.001, "seed": 3}
    assert parse_sigma_spec(canonical_spec(parsed)) == parsed
    assert sigma_mod.semi_elasticity(parsed) is None
    assert sigma_mod.semi_elasticity(parse_sigma_spec("knn:0.25,0.4,20")) == 0.4
    assert sigma_mod.semi_elasticity(parse_sigma_spec("constant:0.3")) == 0.0
    with pytest.raises(SigmaSpecError, match="needs the base classifier"):
        build_sigma("ddrs:0.1,0.5,4")
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    fn = build_sigma("ddrs:0.1,0.5,4,n=16", model=model)
    assert isinstance(fn, DataDependentSigma) and fn.r is None
    assert parse_sigma_spec(fn.spec) == {**parse_sigma_spec("ddrs:0.1,0.5,4"), "n": 16}
    values = fn(torch.rand(5, 12, generator=torch.Generator().manual_seed(0)))
    grid = torch.tensor(fn.sigmas, dtype=torch.float32)
    assert values.shape == (5,) and all(bool((grid == v).any()) for v in values)


@pytest.mark.parametrize("spec", ["ddrs:", "ddrs:0.1,0.5", "ddrs:0.5,0.1,4", "ddrs:0.1,0.5,0",
                                  "ddrs:0.1,0.5,4,n=0", "ddrs:0.1,0.5,4,k=3", "ddrs:0,0.5,4"])
def test_bad_ddrs_specs_raise_one_line_errors(spec):
    with pytest.raises(SigmaSpecError) as info:
        parse_sigma_spec(spec)
    assert "\n" not in str(info.value) and repr(spec) in str(info.value)
