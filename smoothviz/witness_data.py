"""Counterexamples from real data: pairs of actual inputs that refute naive input-dependent certificates.

A certification run with an input-dependent sigma(x) stores, for each certified point x0, the
naive radius R = sigma(x0) Phi^-1(p_A) (p_A: the run's Clopper-Pearson lower bound) beside the
sound radius of Sukenik, Kuvshinov and Guennemann (ICML 2022). The naive claim, "the smoothed
classifier returns A on the whole ball of radius R around x0", rests on p_A at x0 alone. A real
input x1 at distance d = ||x1 - x0|| < R with its actual sigma1 = sigma(x1) refutes it when the
Neyman-Pearson worst case

    P(f*(x1 + sigma1 eps) = A) = bounds.worst_case_probability(sigma0, sigma1, d, p_A, N) < 1/2

(the paper's Theorem 2 and its proof): the base classifier f* (smoothviz.witness, class A on the
likelihood-ratio set of P0-mass exactly p_A) agrees with everything the certificate used, and its
smoothed classifier with the run's sigma does not return A at x1. For an r-semi-elastic sigma
(kNN) this can only happen at distances beyond the sound radius; a pair inside it would show that
the declared r is wrong (``DataWitness.inside_sound``).

Candidates x1, all actual inputs with sigma evaluated there (``search_run``):

- "data point": the other points of the run's split within R of x0;
- "segment": points on the segments from x0 toward its nearest training points, at the distances
  R k / (steps + 1), k = 1..steps (inside the data's convex hull, so inside the pixel range);
- "ascent": a path of steps of length R / (steps + 1) along +grad ln sigma and along -grad ln sigma
  (sigma-ascent and descent), clipped to the data's range, where sigma is differentiable.

``verify_search`` then samples f* with the engine for the best pairs (smoothviz.witness.verify:
CERTIFY at x0 with sigma(x0), n samples at x1 with sigma(x1)). CERTIFY's sampled lower bound falls
below the true probability of A, so its issued naive radius is smaller than R; the verification
therefore builds f* with the smallest probability p >= p_A of class A at x0 for which CERTIFY's
issued naive radius covers d except with probability 1e-6 (``verification_pa``), and counts the
pair as verified when the engine confirms both halves: the issued certificate covers x1 and the
upper confidence bound of P(A) at x1 is below 1/2.

Everything here is a function of a dataset's tensors, a sigma function and a run's results;
``load_run_data`` reads those from a store for the command line and the dashboard.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import special
from torch import Tensor

from smoothviz import bounds
from smoothviz.errors import InvalidArgument
from smoothviz.sigma import SIGMA_MAX, SIGMA_MIN
from smoothviz.witness import (
    DEFAULT_ALPHA,
    DEFAULT_BATCH_SIZE,
    DEFAULT_N,
    DEFAULT_N0,
    Verification,
    Witness,
    build_witness,
    issued_lower_bound,
    plan_verification,
    verify,
)

if TYPE_CHECKING:
    from smoothviz.data import Dataset
    from smoothviz.sigma import SigmaFunction
    from smoothviz.store import Store

__all__ = [
    "SOURCES",
    "DataSearch",
    "DataWitness",
    "RunData",
    "SearchSettings",
    "default_settings",
    "load_run_data",
    "search_run",
    "search_stored_run",
    "summary",
    "verification_pa",
    "verify_search",
]

Array = NDArray[np.float64]
SOURCES = ("data point", "segment", "ascent")
MISS = 1e-6  # probability that a planned verification is not decisive (witness.plan_verification)
_SIGMA_RTOL = 1e-3  # a run's stored sigma(x) against its sigma function rebuilt on the dataset
_CHECKED_POINTS = 16  # points on which that is checked (a ddrs sigma costs n * G passes per point)


@dataclass(frozen=True)
class SearchSettings:
    """How many candidates ``search_run`` tries per certified point.

    ``neighbours``: training points whose segments are walked; ``steps``: distances per segment
    and steps per ascent path; ``data_points``: nearest other points of the split kept;
    ``ascent``: walk the +-grad ln sigma paths where sigma is differentiable; ``shortlist``:
    refuting pairs kept per point for verification; ``batch_size``: inputs per sigma evaluation;
    ``max_points``: search at most this many of the points whose naive radius exceeds the sound
    one, evenly spread over them (None: all).
    """

    neighbours: int = 8
    steps: int = 12
    data_points: int = 64
    ascent: bool = True
    shortlist: int = 4
    batch_size: int = 1024
    max_points: int | None = None

    def __post_init__(self) -> None:
        if self.max_points is not None and (isinstance(self.max_points, bool) or int(self.max_points) != self.max_points
                                            or self.max_points < 1):
            raise InvalidArgument(f"max_points = {self.max_points} must be an integer >= 1 (or None for all)")
        for name in ("neighbours", "steps", "data_points", "shortlist", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < (1 if name in ("steps", "shortlist",
                                                                                         "batch_size") else 0):
                raise InvalidArgument(f"{name} = {value} must be a non-negative integer"
                                      + (" >= 1" if name in ("steps", "shortlist", "batch_size") else ""))


@dataclass(frozen=True)
class DataWitness:
    """A pair of actual inputs (x0 certified by the run, x1 found near it) with their sigma values.

    ``idx``: x0's index in the run's split; ``source``: one of SOURCES; ``partner``: the index of
    the other data point or of the training point whose segment holds x1 (None for an ascent
    step); ``worst`` = P(f*(x1 + sigma1 eps) = A) for f* with probability ``p_a`` of A at x0.
    ``verification``: the engine's sampling of f* (None: not run or not decisive at that n), built
    with probability ``p_verify`` of A at x0.
    """

    idx: int
    source: str
    partner: int | None
    x0: Tensor
    x1: Tensor
    sigma0: float
    sigma1: float
    distance: float
    p_a: float
    naive_radius: float
    sound_radius: float
    worst: float
    verification: Verification | None = None
    p_verify: float | None = None

    @property
    def refuted(self) -> bool:
        """The naive certificate at x0 claims x1 and the worst case there is below 1/2."""
        return 0.0 < self.distance < self.naive_radius and self.worst < 0.5

    @property
    def implied_r(self) -> float:
        """|ln(sigma1/sigma0)| / d: the semi-elasticity this pair shows at least."""
        return abs(math.log(self.sigma1 / self.sigma0)) / self.distance

    @property
    def inside_sound(self) -> bool:
        """The pair lies inside the sound radius too: the sigma is not r-semi-elastic for the declared r."""
        return self.distance < self.sound_radius

    @property
    def confirmed(self) -> bool:
        """The engine confirmed the refutation by sampling (see the module docstring)."""
        return self.verification is not None and self.verification.confirmed

    def witness(self, p_a: float | None = None, r: float | None = None) -> Witness:
        """The explicit worst-case classifier f* of this pair (probability ``p_a`` of A at x0, default the run's)."""
        return build_witness(int(self.x0.numel()), self.sigma0, self.p_a if p_a is None else p_a, self.distance,
                             self.sigma1, r=r, shape=tuple(self.x0.shape), x0=self.x0,
                             direction=(self.x1.double() - self.x0.double()))


@dataclass(frozen=True)
class DataSearch:
    """What ``search_run`` found over a run's points.

    ``points``: rows of the run; ``examined``: certified rows (a prediction, p_A > 1/2);
    ``exceeding``: indices whose naive radius exceeds the sound one (the only ones that can be
    refuted); ``searched``: those the search looked at (all unless SearchSettings.max_points);
    ``shortlists``: per refuted index, its refuting pairs, lowest worst case
    first; ``candidates``: pairs evaluated per source; ``refuted_by_source``: points with a
    refuting pair from that source; ``verify_n``: the sample count of ``verify_search`` (None
    before it ran).
    """

    dim: int
    declared_r: float | None
    points: int
    examined: int
    exceeding: list[int]
    searched: list[int]
    shortlists: dict[int, list[DataWitness]]
    candidates: dict[str, int]
    refuted_by_source: dict[str, int]
    notes: list[str] = field(default_factory=list)
    verify_n: int | None = None

    @property
    def refuted(self) -> int:
        """Points whose naive certificate is refuted by a pair from the data."""
        return len(self.shortlists)

    @property
    def verified(self) -> int | None:
        """Refuted points with a pair the engine confirmed (None before ``verify_search``)."""
        if self.verify_n is None:
            return None
        return sum(any(w.confirmed for w in pairs) for pairs in self.shortlists.values())

    def best(self) -> list[DataWitness]:
        """One pair per refuted point: the confirmed one where there is one, else the lowest worst case;
        lowest worst case first."""
        out = [next((w for w in pairs if w.confirmed), pairs[0]) for pairs in self.shortlists.values()]
        return sorted(out, key=lambda w: (w.worst, w.distance))


# ---------------------------------------------------------------------------------------------
# Candidates
# ---------------------------------------------------------------------------------------------


def _column(results: Any, name: str) -> NDArray:
    """A column of the run's results (a data frame or a mapping of sequences) as a numpy array."""
    try:
        return np.asarray(results[name])
    except (KeyError, IndexError):
        raise InvalidArgument(f"the results lack the column {name!r}") from None


def _sigma_values(sigma_fn: Any, x: Tensor, batch_size: int, device: torch.device) -> Array:
    """sigma at every row of x (float64 on the CPU), in batches."""
    out = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start:start + batch_size].to(device, torch.float32)
            out.append(sigma_fn(chunk).reshape(-1).detach().to("cpu", torch.float64))
    return torch.cat(out).numpy() if out else np.empty(0)


def _nearest(x0: Tensor, pool: Tensor, k: int, chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """Distances and indices of the k nearest rows of ``pool`` to each row of x0 (float64, by blocks)."""
    flat0 = x0.reshape(x0.shape[0], -1).double()
    best_d = torch.full((x0.shape[0], 0), math.inf, dtype=torch.float64)
    best_i = torch.zeros((x0.shape[0], 0), dtype=torch.int64)
    for start in range(0, pool.shape[0], chunk):
        block = pool[start:start + chunk].reshape(-1, flat0.shape[1]).double()
        d = torch.cdist(flat0, block)
        d_all = torch.cat([best_d, d], dim=1)
        i_all = torch.cat([best_i, torch.arange(start, start + block.shape[0]).expand(x0.shape[0], -1)], dim=1)
        take = min(k, d_all.shape[1])
        best_d, pos = torch.topk(d_all, take, dim=1, largest=False)
        best_i = torch.gather(i_all, 1, pos)
    return best_d, best_i


def _grad_log_sigma(sigma_fn: Any, x: Tensor, device: torch.device) -> Tensor | None:
    """grad ln sigma at every row of x (None when sigma has no autograd graph)."""
    xg = x.detach().to(device, torch.float32).requires_grad_(True)
    with torch.enable_grad():
        s = sigma_fn(xg).reshape(-1)
        if not s.requires_grad:
            return None
        (g,) = torch.autograd.grad(torch.log(s).sum(), xg)
    return g.detach().to("cpu", torch.float32)


def _ascent_paths(sigma_fn: Any, x0: Tensor, radius: Array, steps: int, box: tuple[float, float],
                  device: torch.device, batch_size: int) -> tuple[Tensor, NDArray[np.int64], NDArray] | None:
    """Points along +-grad ln sigma from each x0: (points [P * 2 * steps, *shape], owner row, direction sign);
    None when sigma is not differentiable."""
    h = torch.as_tensor(radius / (steps + 1), dtype=torch.float32).view(-1, *[1] * (x0.dim() - 1))
    points, owners, signs = [], [], []
    for sign in (1.0, -1.0):
        x = x0.detach().to(torch.float32).clone()
        for _ in range(steps):
            grads = []
            for start in range(0, x.shape[0], batch_size):
                g = _grad_log_sigma(sigma_fn, x[start:start + batch_size], device)
                if g is None:
                    return None
                grads.append(g)
            g = torch.cat(grads)
            norm = torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1).view(-1, *[1] * (x0.dim() - 1))
            step = torch.where(norm > 0, g / norm.clamp(min=1e-30), torch.zeros_like(g))
            x = (x + sign * h * step).clamp(box[0], box[1])
            points.append(x.clone())
            owners.append(np.arange(x0.shape[0]))
            signs.append(np.full(x0.shape[0], sign))
    return torch.cat(points), np.concatenate(owners), np.concatenate(signs)


def _valid_sigma(values: Array) -> NDArray[np.bool_]:
    return np.isfinite(values) & (values >= SIGMA_MIN) & (values <= SIGMA_MAX)


def search_run(
    results: Any,
    inputs: Tensor,
    sigma_fn: SigmaFunction | Any,
    *,
    dim: int | None = None,
    train: Tensor | None = None,
    declared_r: float | None = None,
    settings: SearchSettings | None = None,
    device: torch.device | str = "cpu",
) -> DataSearch:
    """Pairs of actual inputs that refute the naive certificates of a run (see the module docstring).

    ``results``: the run's per-point results (``store.results``: columns idx, predict, p_a_lower,
    sigma, radius, naive_radius); ``inputs``: the run's split, indexed by idx; ``sigma_fn``: the
    run's sigma function (batch -> sigma); ``train``: the training points of the segments (None:
    no segments); ``dim`` defaults to the inputs' dimension. The certificate's sigma(x0) is the
    stored one; sigma(x1) is evaluated. Deterministic.
    """
    settings = settings or SearchSettings()
    device = torch.device(device)
    idx = _column(results, "idx").astype(np.int64)
    predict = _column(results, "predict").astype(np.int64)
    p_a = _column(results, "p_a_lower").astype(np.float64)
    sigma = _column(results, "sigma").astype(np.float64)
    sound = _column(results, "radius").astype(np.float64)
    naive = _column(results, "naive_radius").astype(np.float64)
    n_dim = int(np.prod(inputs.shape[1:])) if dim is None else int(dim)
    if inputs.dim() < 2 or (len(idx) and (idx.min() < 0 or idx.max() >= inputs.shape[0])):
        raise InvalidArgument("the results' indices do not fit the inputs")
    notes: list[str] = []
    certified = (predict >= 0) & np.isfinite(p_a) & (p_a > 0.5) & (p_a < 1.0)
    examined = int(certified.sum())
    with np.errstate(invalid="ignore"):
        exceeds = certified & np.isfinite(sigma) & np.isfinite(naive) & (naive > np.nan_to_num(sound) * (1 + 1e-9))
    rows = np.flatnonzero(exceeds)
    exceeding = [int(i) for i in idx[rows]]
    if settings.max_points is not None and len(rows) > settings.max_points:
        rows = rows[np.unique(np.round(np.linspace(0, len(rows) - 1, int(settings.max_points))).astype(np.int64))]
        notes.append(f"searched {len(rows)} of the {len(exceeding)} points whose naive radius exceeds the sound one")
    candidates = dict.fromkeys(SOURCES, 0)
    empty = DataSearch(n_dim, declared_r, len(idx), examined, exceeding, [int(i) for i in idx[rows]], {},
                       candidates, dict.fromkeys(SOURCES, 0), notes)
    if not len(rows):
        return empty
    x0 = inputs[torch.as_tensor(idx[rows])].to(torch.float32)
    shape = tuple(x0.shape[1:])
    s0, pa, r_naive, r_sound = sigma[rows], p_a[rows], naive[rows], np.nan_to_num(sound[rows])
    # One list of candidate pairs: owner row (into ``rows``), the point x1, its source and partner.
    owner_parts: list[NDArray[np.int64]] = []
    point_parts: list[Tensor] = []
    source_parts: list[NDArray[np.int64]] = []
    partner_parts: list[NDArray[np.int64]] = []

    # other points of the split within the naive radius
    if settings.data_points > 0 and inputs.shape[0] > 1:
        d, j = _nearest(x0, inputs, settings.data_points + 1)
        keep = (d > 0) & (d < torch.as_tensor(r_naive)[:, None]) & (j != torch.as_tensor(idx[rows])[:, None])
        own, col = keep.nonzero(as_tuple=True)
        if len(own):
            partner = j[own, col]
            owner_parts.append(own.numpy())
            point_parts.append(inputs[partner].to(torch.float32))
            source_parts.append(np.zeros(len(own), dtype=np.int64))
            partner_parts.append(partner.numpy())

    # segments toward the nearest training points, at fractions of the naive radius
    if train is not None and settings.neighbours > 0 and train.shape[0] > 0:
        d, j = _nearest(x0, train, settings.neighbours)
        fractions = torch.arange(1, settings.steps + 1, dtype=torch.float64) / (settings.steps + 1)
        along = (torch.as_tensor(r_naive)[:, None, None] * fractions[None, None, :]).expand(*d.shape, -1)  # [P, K, steps]
        keep = (along < d[:, :, None]) & (d[:, :, None] > 0)
        own, nb, k = keep.nonzero(as_tuple=True)
        if len(own):
            start = x0[own].double()
            target = train[j[own, nb]].to(torch.float64)
            unit = (target - start) / d[own, nb].view(-1, *[1] * len(shape))
            points = start + along[own, nb, k].view(-1, *[1] * len(shape)) * unit
            owner_parts.append(own.numpy())
            point_parts.append(points.to(torch.float32))
            source_parts.append(np.ones(len(own), dtype=np.int64))
            partner_parts.append(j[own, nb].numpy())

    # paths along +-grad ln sigma, clipped to the data's range
    if settings.ascent:
        lo = float(inputs.min()) if train is None else min(float(inputs.min()), float(train.min()))
        hi = float(inputs.max()) if train is None else max(float(inputs.max()), float(train.max()))
        paths = _ascent_paths(sigma_fn, x0, r_naive, settings.steps, (lo, hi), device, settings.batch_size)
        if paths is None:
            notes.append("ascent skipped: sigma is not differentiable (no autograd graph)")
        else:
            points, own, _ = paths
            owner_parts.append(own.astype(np.int64))
            point_parts.append(points)
            source_parts.append(np.full(len(own), 2, dtype=np.int64))
            partner_parts.append(np.full(len(own), -1, dtype=np.int64))

    if not owner_parts:
        return empty
    owner = np.concatenate(owner_parts)
    points = torch.cat(point_parts)
    source = np.concatenate(source_parts)
    partner = np.concatenate(partner_parts)
    dist = torch.linalg.vector_norm((points.double() - x0[torch.as_tensor(owner)].double()).reshape(len(owner), -1),
                                    dim=1).numpy()
    inside = (dist > 0) & (dist < r_naive[owner])
    owner, points, source, partner, dist = owner[inside], points[torch.as_tensor(inside)], source[inside], \
        partner[inside], dist[inside]
    for s, name in enumerate(SOURCES):
        candidates[name] = int((source == s).sum())
    if not len(owner):
        return replace(empty, candidates=candidates)
    s1 = _sigma_values(sigma_fn, points, settings.batch_size, device)
    ok = _valid_sigma(s1)
    if not ok.all():
        notes.append(f"{int((~ok).sum())} candidate inputs have sigma outside [{SIGMA_MIN:g}, {SIGMA_MAX:g}]; skipped")
    worst = np.full(len(owner), np.inf)
    worst[ok] = np.asarray(bounds.worst_case_probability(s0[owner[ok]], s1[ok], dist[ok], pa[owner[ok]], n_dim),
                           dtype=np.float64).reshape(-1)
    refuting = ok & (worst < 0.5)
    shortlists: dict[int, list[DataWitness]] = {}
    by_source = dict.fromkeys(SOURCES, 0)
    for row in np.unique(owner[refuting]):
        mine = np.flatnonzero(refuting & (owner == row))
        for s, name in enumerate(SOURCES):
            by_source[name] += int((source[mine] == s).any())
        order = mine[np.lexsort((dist[mine], worst[mine]))][: settings.shortlist]
        point_idx = int(idx[rows[row]])
        shortlists[point_idx] = [DataWitness(
            idx=point_idx, source=SOURCES[int(source[c])], partner=None if partner[c] < 0 else int(partner[c]),
            x0=x0[row].clone(), x1=points[c].clone(), sigma0=float(s0[row]), sigma1=float(s1[c]),
            distance=float(dist[c]), p_a=float(pa[row]), naive_radius=float(r_naive[row]),
            sound_radius=float(r_sound[row]), worst=float(worst[c]),
        ) for c in order]
    inside_sound = sum(any(w.inside_sound for w in pairs) for pairs in shortlists.values())
    if inside_sound:
        notes.append(f"{inside_sound} refuting pairs lie inside the sound radius: the declared r "
                     f"({declared_r}) does not hold for this sigma")
    return DataSearch(n_dim, declared_r, len(idx), examined, exceeding, [int(i) for i in idx[rows]], shortlists,
                      candidates, by_source, notes)


# ---------------------------------------------------------------------------------------------
# Verification by sampling
# ---------------------------------------------------------------------------------------------


def verification_pa(sigma0: float, distance: float, p_min: float, n: int, alpha: float,
                    miss: float = MISS) -> float | None:
    """The smallest p >= p_min for which CERTIFY with n samples issues a naive radius above ``distance``
    except with probability ``miss`` (None when no p < 1 does).

    The issued radius is at least sigma0 Phi^-1(witness.issued_lower_bound(p, n, alpha, miss)),
    non-decreasing in p; its supremum sigma0 Phi^-1(alpha^(1/n)) is the waterfall ceiling.
    Bisection on p (the smallest p keeps the worst case at x1 lowest).
    """

    def issued(p: float) -> float:
        lower = issued_lower_bound(p, n, alpha, miss)
        return sigma0 * float(special.ndtri(lower)) if lower > 0.5 else 0.0

    if issued(p_min) > distance:
        return float(p_min)
    hi = 1.0 - 1e-15
    if issued(hi) <= distance:
        return None
    lo = float(p_min)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if issued(mid) > distance:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-15:
            break
    return hi


def verify_search(
    search: DataSearch,
    n: int = DEFAULT_N,
    alpha: float = DEFAULT_ALPHA,
    *,
    seed: int = 0,
    n0: int = DEFAULT_N0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str = "cpu",
    limit: int | None = None,
) -> DataSearch:
    """Sample the worst-case classifier of each refuted point's pairs with the engine (until one is confirmed).

    For each pair: p = ``verification_pa``; skipped when no p works or ``witness.plan_verification``
    says the n samples cannot be decisive; else ``witness.verify`` runs. ``limit`` bounds the
    points verified (lowest worst case first). Returns the search with the verifications filled in.
    """
    for name, value in (("n", n), ("n0", n0), ("batch_size", batch_size)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise InvalidArgument(f"{name} = {value} must be an integer >= 1")
    if n0 > n:
        raise InvalidArgument(f"n0 = {n0} exceeds n = {n}")
    if not 0.0 < alpha < 1.0:
        raise InvalidArgument(f"alpha = {alpha} must be in (0, 1)")
    order = sorted(search.shortlists, key=lambda i: search.shortlists[i][0].worst)
    chosen = set(order if limit is None else order[: max(0, int(limit))])
    out: dict[int, list[DataWitness]] = {}
    for point, pairs in search.shortlists.items():
        done: list[DataWitness] = []
        confirmed = point not in chosen
        for pair in pairs:
            if confirmed:
                done.append(pair)
                continue
            p = verification_pa(pair.sigma0, pair.distance, pair.p_a, n, alpha)
            if p is None:
                done.append(pair)
                continue
            w = pair.witness(p_a=p, r=search.declared_r)
            if not plan_verification(w, n, alpha, n0, MISS).decisive:
                done.append(pair)
                continue
            v = verify(w, n=n, alpha=alpha, seed=seed, batch_size=batch_size, device=device, n0=n0)
            done.append(replace(pair, verification=v, p_verify=p))
            confirmed = v.confirmed
        out[point] = done
    return replace(search, shortlists=out, verify_n=int(n))


# ---------------------------------------------------------------------------------------------
# Summary and the store
# ---------------------------------------------------------------------------------------------


def _pair_record(w: DataWitness) -> dict:
    record: dict = {
        "idx": w.idx, "source": w.source, "partner": w.partner, "distance": w.distance, "sigma0": w.sigma0,
        "sigma1": w.sigma1, "implied_r": w.implied_r, "p_a": w.p_a, "naive_radius": w.naive_radius,
        "sound_radius": w.sound_radius, "worst_case_probability": w.worst, "inside_sound_radius": w.inside_sound,
    }
    v = w.verification
    if v is not None:
        record["verify"] = {
            "p_a_of_f": w.p_verify, "n0": v.n0, "n": v.n, "alpha": v.alpha, "seed": v.seed,
            "x0": {"counts": v.counts_x0, "predict": v.predict_x0, "p_a_lower": v.p_a_lower,
                   "naive_radius_issued": v.naive_radius_issued},
            "x1": {"counts": v.counts_x1, "p_a_upper": v.p_a_upper_x1, "interval": list(v.interval_x1)},
            "confirmed": v.confirmed,
        }
    return record


def summary(search: DataSearch, examples: int = 5) -> dict:
    """The search as JSON-ready numbers: points, examined, naive > sound, refuted (and verified), examples."""
    out: dict = {
        "dim": search.dim, "declared_r": search.declared_r, "points": search.points, "examined": search.examined,
        "naive_exceeds_sound": len(search.exceeding), "searched": len(search.searched),
        "refuted_by_data_pair": search.refuted,
        "refuted_by_source": search.refuted_by_source, "candidates": search.candidates,
    }
    if search.verify_n is not None:
        out["refuted_and_verified"] = search.verified
        out["verify_n"] = search.verify_n
    out["examples"] = [_pair_record(w) for w in search.best()[: max(0, int(examples))]]
    out["notes"] = list(search.notes)
    return out


@dataclass
class RunData:
    """A stored run with what the search needs: its results, split inputs, training points and sigma."""

    run: dict
    results: Any
    dataset: Dataset
    inputs: Tensor
    train: Tensor | None
    sigma_fn: SigmaFunction

    @property
    def declared_r(self) -> float | None:
        """The run's declared semi-elasticity (None: naive certificate only)."""
        r = self.run.get("r")
        if r is None or (isinstance(r, float) and math.isnan(r)):
            return None
        return float(r)


def _run_model(run: Mapping, dataset: Dataset, device: torch.device):
    """The run's base classifier (a ddrs sigma optimises for it)."""
    from smoothviz.models import load_checkpoint

    record = (run.get("options") or {}).get("model")
    if record is None:
        model, _ = load_checkpoint(run["checkpoint"], device=device, expected_dataset=dataset.name)
        return model
    from smoothviz.model_sources import load_run_model

    model, _ = load_run_model(str(run["checkpoint"]), record, dataset, device)
    return model


def load_run_data(store: Store, ref: str | int, device: torch.device | str = "cpu") -> RunData:
    """A run of the store ready for ``search_run``: its sigma function rebuilt on its dataset.

    Refused (InvalidArgument, one line): a run without results, without a sigma function or
    without per-point sigma, or whose stored sigma(x) differs from its rebuilt sigma function.
    """
    from smoothviz.certify import select_split
    from smoothviz.data import load_dataset
    from smoothviz.data_sources import materialize
    from smoothviz.knn_reference import build_run_sigma
    from smoothviz.sigma import parse_sigma_spec

    device = torch.device(device)
    run_id = store.resolve_run(ref)
    run = store.run(run_id)
    results = store.results(run_id)
    if results.empty:
        raise InvalidArgument(f"run {run_id} has no results yet")
    spec = run.get("sigma_spec")
    if not spec:
        raise InvalidArgument(f"run {run_id} records no sigma function")
    if results["sigma"].isna().any():
        raise InvalidArgument(f"run {run_id} does not record sigma(x) for every point (an imported log?)")
    dataset = load_dataset(run["dataset"])
    params = parse_sigma_spec(spec)
    model = _run_model(run, dataset, device) if params["kind"] == "ddrs" else None
    sigma_fn = build_run_sigma(spec, dataset, (run.get("options") or {}).get("sigma_reference"), device, model=model)
    inputs, _ = select_split(dataset, str(run.get("split") or "test"))
    inputs = materialize(inputs)
    if int(results["idx"].max()) >= inputs.shape[0]:
        raise InvalidArgument(f"run {run_id}: its indices do not fit the {run.get('split')} split of {dataset.name}")
    check = results.head(_CHECKED_POINTS)
    again = _sigma_values(sigma_fn, inputs[torch.tensor(check["idx"].to_numpy(np.int64))], 256, device)
    stored = check["sigma"].to_numpy(np.float64)
    if not np.allclose(again, stored, rtol=_SIGMA_RTOL, atol=0.0):
        worst = float(np.max(np.abs(again - stored) / stored))
        raise InvalidArgument(f"run {run_id}: the stored sigma(x) differs from {spec} rebuilt on {dataset.name} "
                              f"(up to {worst:.2g} relative); the data or the sigma reference changed")
    train = materialize(dataset.train_x) if len(dataset.train_x) else None
    return RunData(run, results, dataset, inputs, train, sigma_fn)


def default_settings(sigma_fn: Any) -> SearchSettings:
    """The search's defaults for a sigma function: a data-dependent sigma (smoothviz.ddrs) costs n * G forward
    passes of the model per input, so it gets a few candidates on at most 40 points."""
    from smoothviz.ddrs import DataDependentSigma

    if isinstance(sigma_fn, DataDependentSigma):
        return SearchSettings(neighbours=2, steps=6, data_points=16, ascent=False, max_points=40, batch_size=64)
    return SearchSettings()


def search_stored_run(data: RunData, settings: SearchSettings | None = None,
                      device: torch.device | str = "cpu") -> DataSearch:
    """``search_run`` over a loaded run (``default_settings`` of its sigma unless ``settings``)."""
    return search_run(data.results, data.inputs, data.sigma_fn, dim=data.dataset.dim, train=data.train,
                      declared_r=data.declared_r, settings=settings or default_settings(data.sigma_fn), device=device)
