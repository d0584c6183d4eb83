"""Counterexamples from real data: on a sigma with exactly known semi-elasticity the search refutes
exactly the pairs the Neyman-Pearson formula says it does (and none inside the sound radius), on the
shipped digits kNN run every reported pair is recomputed from scratch, the engine confirms the
refutations it samples, and runs that cannot be searched are refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import special

from smoothviz import bounds, witness_data
from smoothviz.errors import InvalidArgument
from smoothviz.examples import load_examples
from smoothviz.sigma import SigmaFunction
from smoothviz.store import Store

DIM = 64
SIGMA0, R, P_A = 0.25, 0.5, 0.99


class ExpSigma(SigmaFunction):
    """sigma(x) = SIGMA0 * exp(R * (x_1 - 1/2)): exactly R-semi-elastic, steepest along e1 (grad ln sigma = R e1)."""

    def __init__(self) -> None:
        self.r, self.spec = R, "exp"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return SIGMA0 * torch.exp(R * (x.reshape(x.shape[0], -1)[:, 0] - 0.5))

    def params(self) -> dict:
        return {"kind": "exp"}


def _constructed():
    """x0 = 1/2 (sigma = SIGMA0) certified with P_A; other points at signed offsets t along e1 and e2."""
    naive = float(bounds.naive_radius(P_A, SIGMA0))
    sound = float(bounds.input_dependent_radius(P_A, SIGMA0, R, DIM))
    offsets = np.linspace(-1.1 * naive, 1.1 * naive, 45)
    x0 = torch.full((DIM,), 0.5, dtype=torch.float64)
    rows = [x0]
    for axis in (0, 1):
        for t in offsets:
            if t != 0:
                x = x0.clone()
                x[axis] += t
                rows.append(x)
    inputs = torch.stack(rows).float()
    n = inputs.shape[0]
    results = {"idx": np.arange(n), "predict": np.r_[0, -np.ones(n - 1)], "p_a_lower": np.r_[P_A, np.zeros(n - 1)],
               "sigma": np.r_[SIGMA0, np.full(n - 1, SIGMA0)], "radius": np.r_[sound, np.zeros(n - 1)],
               "naive_radius": np.r_[naive, np.zeros(n - 1)]}
    return inputs, results, naive, sound


def test_refuted_exactly_where_the_formula_says() -> None:
    inputs, results, naive, sound = _constructed()
    sigma = ExpSigma()
    # data points only: every point along e1 and e2 within the naive radius is a candidate
    search = witness_data.search_run(results, inputs, sigma, declared_r=R, settings=witness_data.SearchSettings(
        neighbours=0, ascent=False, data_points=200, shortlist=200))
    assert (search.points, search.examined, search.exceeding) == (inputs.shape[0], 1, [0])
    x0 = inputs[0].double()
    expected = []
    for j in range(1, inputs.shape[0]):
        d = float(torch.linalg.vector_norm(inputs[j].double() - x0))
        s1 = float(sigma(inputs[j:j + 1]))
        worst = float(bounds.worst_case_probability(SIGMA0, s1, d, P_A, DIM))
        if 0 < d < naive and worst < 0.5:
            expected.append(j)
    found = sorted(w.partner for w in search.shortlists.get(0, []))
    assert found == expected and len(expected) > 0
    assert search.refuted == 1 and search.refuted_by_source["data point"] == 1
    for w in search.shortlists[0]:
        assert sound < w.distance < naive and not w.inside_sound  # never inside the sound radius
        assert w.implied_r <= R * (1 + 1e-5)  # moving along e1 changes ln sigma by R per unit
        assert float(inputs[w.partner, 1]) == 0.5  # only the sigma-changing axis refutes: along e2 sigma is constant
    # the nearest refuted offset on the binding side lies within one grid step beyond the sound radius
    step = float(np.diff(np.linspace(-1.1 * naive, 1.1 * naive, 45))[0])
    assert min(w.distance for w in search.shortlists[0]) <= sound + step


def test_ascent_and_segments_find_the_breaking_distance() -> None:
    inputs, results, naive, sound = _constructed()
    sigma = ExpSigma()
    far = torch.full((2, DIM), 0.5)
    far[0, 0], far[1, 0] = 0.5 + 3 * naive, 0.5 - 3 * naive  # training points straight along +-e1
    steps = 40
    settings = witness_data.SearchSettings(neighbours=2, steps=steps, data_points=0, shortlist=500)
    search = witness_data.search_run(results, inputs, sigma, train=far, declared_r=R, settings=settings)
    pairs = search.shortlists[0]
    h = naive / (steps + 1)
    for source in ("segment", "ascent"):
        mine = [w for w in pairs if w.source == source]
        assert mine, source
        for w in mine:  # the pair is what it says: sigma(x1), distance and worst case recomputed
            assert w.sigma1 == pytest.approx(float(sigma(w.x1[None])), rel=1e-6)
            assert w.distance == pytest.approx(float(torch.linalg.vector_norm(w.x1.double() - w.x0.double())),
                                               rel=1e-9)
            assert w.worst == pytest.approx(float(bounds.worst_case_probability(
                SIGMA0, w.sigma1, w.distance, P_A, DIM)), abs=1e-12)
            assert sound < w.distance < naive
            # the steps land on multiples of h along e1 (ascent: grad ln sigma = R e1 exactly)
            assert w.distance / h == pytest.approx(round(w.distance / h), abs=1e-3)
        # the first breaking distance is within one step of the sound radius (Theorem 3: the band ends bind)
        assert min(w.distance for w in mine) <= sound + h * (1 + 1e-6)
    assert search.refuted_by_source == {"data point": 0, "segment": 1, "ascent": 1}
    assert search.candidates["ascent"] == 2 * steps and search.candidates["segment"] == 2 * steps
    assert search.notes == []


def test_a_constant_or_abstaining_run_has_nothing_to_refute() -> None:
    inputs, results, naive, _ = _constructed()
    same = dict(results, radius=np.r_[naive, np.zeros(inputs.shape[0] - 1)])  # sound = naive (r = 0)
    search = witness_data.search_run(same, inputs, ExpSigma())
    assert search.examined == 1 and search.exceeding == [] and search.refuted == 0
    none = dict(results, predict=-np.ones(inputs.shape[0]))
    assert witness_data.search_run(none, inputs, ExpSigma()).examined == 0


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """The shipped digits kNN example run, cut to its first 30 points."""
    store = Store(tmp_path_factory.mktemp("wd") / "s.db")
    knn = next(i for i in load_examples(store) if "knn" in store.run(i)["name"] and store.run(i)["dataset"] == "digits")
    run = store.run(knn)
    rows = store.results(knn).head(30)
    small = store.create_run("digits knn head", run["dataset"], run["split"], run["checkpoint"], run["sigma_spec"],
                             run["sigma_params"], run["r"], run["n0"], run["n"], run["alpha"], "cpu",
                             rows["idx"].tolist(), 0, 256)
    for row in rows.to_dict("records"):
        store.add_result(small, row)
    store.set_status(small, "done")
    yield store, small
    store.close()


def test_digits_knn_pairs_recomputed(digits_run, one_thread) -> None:
    store, run_id = digits_run
    data = witness_data.load_run_data(store, run_id)
    assert data.declared_r == 0.4 and data.inputs.shape[1:] == (1, 8, 8)
    search = witness_data.search_stored_run(data, witness_data.SearchSettings(neighbours=4, steps=8))
    assert search.examined >= 28 and len(search.exceeding) == search.examined  # r > 0: naive > sound everywhere
    assert 0 < search.refuted <= len(search.exceeding)
    for pairs in search.shortlists.values():
        for w in pairs:
            row = data.results.set_index("idx").loc[w.idx]
            assert w.sigma0 == row["sigma"] and w.p_a == row["p_a_lower"] and w.naive_radius == row["naive_radius"]
            assert w.sigma1 == pytest.approx(float(data.sigma_fn(w.x1[None])), rel=1e-5)
            assert w.distance < w.naive_radius and w.worst < 0.5
            assert w.distance > w.sound_radius  # kNN is provably 0.4-semi-elastic
            assert w.implied_r <= 0.4 * (1 + 1e-4)
            assert 0.0 <= float(w.x1.min()) and float(w.x1.max()) <= 1.0  # an input in the pixel range
    out = witness_data.summary(search, examples=3)
    assert json.loads(json.dumps(out)) == out and len(out["examples"]) == min(3, search.refuted)
    assert out["refuted_by_data_pair"] == search.refuted and "refuted_and_verified" not in out


def test_verification_confirms_by_sampling(digits_run, one_thread) -> None:
    store, run_id = digits_run
    data = witness_data.load_run_data(store, run_id)
    search = witness_data.search_stored_run(data, witness_data.SearchSettings(neighbours=4, steps=8, shortlist=2))
    n, alpha = 10_000, 0.001
    checked = witness_data.verify_search(search, n=n, alpha=alpha, seed=1, limit=6)
    assert checked.verify_n == n and 0 < checked.verified <= 6
    for pairs in checked.shortlists.values():
        for w in pairs:
            v = w.verification
            if v is None:
                continue
            assert w.p_verify >= w.p_a and sum(v.counts_x0) == n and sum(v.counts_x1) == n
            if v.confirmed:  # CERTIFY's issued certificate covers x1, and P(A) at x1 < 1/2 at level alpha
                assert v.predict_x0 == 0 and v.naive_radius_issued > w.distance and v.p_a_upper_x1 < 0.5
    again = witness_data.verify_search(search, n=n, alpha=alpha, seed=1, limit=6)
    assert again.verified == checked.verified  # seeded


def test_verification_pa_is_the_smallest_sufficient_probability() -> None:
    n, alpha, s0 = 10_000, 0.001, 0.25

    def issued(p: float) -> float:
        lower = witness_data.issued_lower_bound(p, n, alpha, witness_data.MISS)
        return s0 * float(special.ndtri(lower)) if lower > 0.5 else 0.0

    for d in (0.1, 0.5, 0.7):
        p = witness_data.verification_pa(s0, d, 0.6, n, alpha)
        assert p is not None and issued(p) > d and issued(p - 1e-9) <= d
    assert witness_data.verification_pa(s0, 0.01, 0.9, n, alpha) == 0.9  # already enough
    ceiling = s0 * float(special.ndtri(alpha ** (1 / n)))
    assert witness_data.verification_pa(s0, ceiling * 1.01, 0.9, n, alpha) is None  # beyond the waterfall


def test_runs_that_cannot_be_searched_are_refused(digits_run, tmp_path) -> None:
    store, run_id = digits_run
    run = store.run(run_id)
    empty = store.create_run("no results", "digits", "test", run["checkpoint"], run["sigma_spec"], {}, 0.4, 100,
                             1000, 0.001, "cpu", [0, 1], 0, 256)
    with pytest.raises(InvalidArgument, match="no results yet"):
        witness_data.load_run_data(store, empty)
    bent = store.create_run("bent sigma", "digits", "test", run["checkpoint"], run["sigma_spec"], {}, 0.4, 100,
                            1000, 0.001, "cpu", [0, 1], 0, 256)
    for row in store.results(run_id).head(2).to_dict("records"):
        store.add_result(bent, {**row, "sigma": row["sigma"] * 1.1})
    with pytest.raises(InvalidArgument, match="differs from knn"):
        witness_data.load_run_data(store, bent)
    log = tmp_path / "l.tsv"
    log.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t1.0\n")
    from smoothviz.store import import_cohen_log

    imported = import_cohen_log(store, log, "imp", "digits", "knn:0.25,0.4,20")
    with pytest.raises(InvalidArgument, match="does not record sigma"):
        witness_data.load_run_data(store, imported)
    with pytest.raises(InvalidArgument, match="lack the column"):
        witness_data.search_run({"idx": [0]}, torch.zeros(1, 3), ExpSigma())


def test_max_points_spreads_the_search(digits_run, one_thread) -> None:
    store, run_id = digits_run
    data = witness_data.load_run_data(store, run_id)
    search = witness_data.search_stored_run(data, witness_data.SearchSettings(neighbours=2, steps=4, max_points=5))
    assert len(search.searched) == 5 and len(search.exceeding) >= 28
    assert search.searched[0] == search.exceeding[0] and search.searched[-1] == search.exceeding[-1]
    assert set(search.shortlists) <= set(search.searched) and "searched 5 of the" in search.notes[0]


def test_settings_are_checked() -> None:
    with pytest.raises(InvalidArgument, match="steps"):
        witness_data.SearchSettings(steps=0)
    with pytest.raises(InvalidArgument, match="neighbours"):
        witness_data.SearchSettings(neighbours=-1)
    with pytest.raises(InvalidArgument, match="max_points"):
        witness_data.SearchSettings(max_points=0)
