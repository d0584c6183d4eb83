"""Counterexamples to the naive input-dependent certificate: explicit, checkable witnesses.

Earlier input-dependent smoothing works certified R = sigma(x0) * Phi^-1(p_A) (the *naive*
radius). Sukenik, Kuvshinov and Guennemann (ICML 2022, Sec. 4 and Theorem 2) show why this is
not justified: at a nearby x1 the smoothed classifier uses sigma(x1), and the base classifier
that minimises P(f(x1 + sigma1 eps) = A) among all classifiers with P(f(x0 + sigma0 eps) = A) = p_A
can push that probability below 1/2 well inside the naive radius. This module builds that base
classifier explicitly, so that the claim can be checked by sampling in the full input dimension:

- ``worst_case_set`` / ``WorstCaseClassifier``: the Neyman-Pearson set as a torch classifier;
- ``build_witness`` / ``Witness``: (f*, x0, x1, sigma0, sigma1) with the formula's probabilities,
  the naive and the sound radius and whether the naive certificate is broken;
- ``search_band`` / ``band_grid`` / ``search_points``: which (distance, sigma1) pairs break a naive
  certificate, for a semi-elastic sigma or for actual points with their sigma;
- ``verify``: CERTIFY at x0 and an upper confidence bound at x1, run by the engine on f*.

The mathematics (Neyman-Pearson lemma, Sukenik et al. 2022, Theorem 2 and its proof). Let
P0 = N(x0, s0^2 I), P1 = N(x1, s1^2 I) in dimension N, d = ||x1 - x0||, u = (x1 - x0) / d. Among
all sets S with P0(S) = p_A, the smallest P1(S) is attained by a sublevel set of the likelihood
ratio p1/p0 (the lemma: put the P0-mass where P1 is least likely relative to P0). Here

    ln p1(z)/p0(z) = const + (1/s0^2 - 1/s1^2) ||z - c||^2 / 2,
    c = (s0^2 x1 - s1^2 x0) / (s0^2 - s1^2),

so the ratio is increasing in ||z - c|| when s1 > s0 (then S is the ball around c) and
decreasing when s1 < s0 (then S is the complement of a ball around c); for s1 = s0 it is
increasing in <z, u> and S is the half-space {<z - x0, u> <= s0 Phi^-1(p_A)} (Cohen et al. 2019).
Intuitively, a wider P1 puts less mass on a compact ball, a narrower one less on the outside.

Numerics. In units of s0 (y = (z - x0)/s0, kappa = s1/s0, delta = d/s0, m = ||c - x0||/s0 =
delta/|kappa^2 - 1|, sign s = +1 for the ball, -1 for the complement) the centre is c' = -s m u
and ||y - c'||^2 = ||y||^2 + 2 s m <y, u> + m^2. For s1 near s0 the centre is far away (m ~ 1e6
at s1/s0 = 1 + 1e-6), so testing ||z - c||^2 <= rho^2 directly cancels catastrophically. Dividing
by 2m instead gives one stable form for every case,

    A  <=>  lin * <y, u> + quad * (||y||^2 - N) <= threshold,

with (lin, quad) = (1, s/(2m)) for d > 0, (0, s) for d = 0 and (1, 0) for the half-space; the
squared norm is centred at its mean N, so no term is much larger than the statistic's spread.
The threshold comes from the same two routes as smoothviz.bounds: scipy's non-central chi-square
quantile where the non-centrality m^2 is moderate, the 1-D integral over the chi-square part
(bounds' parametrisation rho'^2 = m^2 + 2 s m eta) where it is huge.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special, stats
from torch import Tensor, nn

from smoothviz import bounds
from smoothviz.errors import InvalidArgument
from smoothviz.sigma import SigmaFunction

__all__ = [
    "BandSearch",
    "PointSearch",
    "RampSigma",
    "Verification",
    "VerificationPlan",
    "Witness",
    "WorstCaseClassifier",
    "WorstCaseSet",
    "band_grid",
    "breaks_naive",
    "build_witness",
    "clopper_pearson_interval",
    "clopper_pearson_upper",
    "implied_semi_elasticity",
    "issued_lower_bound",
    "plan_verification",
    "search_band",
    "search_points",
    "verify",
    "worst_case_set",
]

Array = NDArray[np.float64]

CLASS_A, CLASS_B = 0, 1
DEFAULT_N = 10_000
DEFAULT_N0 = 100
DEFAULT_ALPHA = 1e-3
DEFAULT_BATCH_SIZE = 2048


def _out(x: Array) -> Array:
    """0-d arrays as numpy scalars, others unchanged (bounds' convention)."""
    return x[()] if x.ndim == 0 else x


# ---------------------------------------------------------------------------------------------
# Clopper-Pearson upper bound and two-sided interval (the lower bound is bounds')
# ---------------------------------------------------------------------------------------------


def clopper_pearson_upper(k: ArrayLike, n: ArrayLike, alpha: ArrayLike) -> Array:
    """One-sided (1 - alpha) Clopper-Pearson upper confidence bound of a binomial proportion.

    The p with P(Binomial(n, p) <= k) = alpha, i.e. the (1 - alpha) quantile of Beta(k + 1, n - k);
    1 where k = n. ``isf`` keeps the precision of the small tail alpha.
    """
    k, n, alpha = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (k, n, alpha)))
    with np.errstate(invalid="ignore"):
        high = stats.beta.isf(alpha, k + 1.0, n - k)
    return _out(np.where(k >= n, 1.0, high))


def clopper_pearson_interval(k: ArrayLike, n: ArrayLike, alpha: ArrayLike) -> tuple[Array, Array]:
    """Two-sided (1 - alpha) Clopper-Pearson interval: each end misses with probability <= alpha/2."""
    half = np.asarray(alpha, dtype=float) / 2.0
    return bounds.clopper_pearson_lower(k, n, half), clopper_pearson_upper(k, n, half)


# ---------------------------------------------------------------------------------------------
# The Neyman-Pearson worst-case set and its classifier
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorstCaseSet:
    """Class A's region in units of sigma0 around x0: lin*<y,u> + quad*(||y||^2 - dim) <= threshold.

    ``kind`` is "ball" (sigma1 > sigma0), "complement" (of a ball, sigma1 < sigma0) or
    "half-space" (sigma1 = sigma0); ``centre_offset`` is m = ||c - x0|| / sigma0 (inf for the
    half-space), the ball's centre lying at x0 - s m sigma0 u (s = +1 ball, -1 complement).
    """

    kind: str
    lin: float
    quad: float
    threshold: float
    centre_offset: float
    dim: int


def _validated(sigma0: float, sigma1: float, distance: float, p_a: float, dim: int
               ) -> tuple[float, float, float, float, int]:
    """Scalars of a witness, or InvalidArgument naming the first one out of range."""
    checks = (("sigma0", sigma0, "> 0", lambda v: 0.0 < v < math.inf),
              ("sigma1", sigma1, "> 0", lambda v: 0.0 < v < math.inf),
              ("distance", distance, ">= 0", lambda v: 0.0 <= v < math.inf),
              ("p_a", p_a, "in (0, 1)", lambda v: 0.0 < v < 1.0))
    values = []
    for name, value, rule, ok in checks:
        v = float(value)
        if not ok(v):
            raise InvalidArgument(f"{name} = {value} must be finite and {rule}")
        values.append(v)
    if isinstance(dim, bool) or int(dim) != dim or dim < 1:
        raise InvalidArgument(f"dim = {dim} must be an integer >= 1")
    s0, s1, d, p = values
    return s0, s1, d, p, int(dim)


def _eta_integral(mu: float, s: float, p_a: float, dim: int) -> float:
    """eta with P0(y_1 + s mu ||y||^2 / 2 <= eta) = p_a, y ~ N(0, I_dim), by the integral route.

    Uses bounds' Gauss rule over w = ||y_2..N||^2 ~ chi2(dim - 1) and its conditional set
    probability (the residual in the small tail where p_a > 1/2); brentq on a smooth increasing
    function, bracketed around bounds' first-order start Phi^-1(p_a) + s (dim - 1) mu / 2.
    """
    w0, om = bounds._chi2_nodes(dim - 1, bounds._N_NODES)
    upper = p_a > 0.5
    one = np.ones((1, 1))

    def residual(eta: float) -> float:
        prob, _ = bounds._p0_residual(eta * one, mu * one, s * one, w0[None, :], p_a * one,
                                      np.array([[upper]]))
        value = float(prob[0] @ om)
        return (1.0 - p_a) - value if upper else value - p_a

    start = float(special.ndtri(p_a)) + s * (dim - 1) * mu / 2.0
    spread = math.sqrt(1.0 + dim * mu * mu / 2.0)  # sd of y_1 + s mu ||y||^2 / 2
    lo, hi = start - spread, start + spread
    while residual(lo) > 0:
        lo -= 4.0 * (hi - lo)
    while residual(hi) < 0:
        hi += 4.0 * (hi - lo)
    return float(optimize.brentq(residual, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps,
                                 maxiter=500))


def worst_case_set(sigma0: float, sigma1: float, distance: float, p_a: float, dim: int
                   ) -> WorstCaseSet:
    """The Neyman-Pearson set with P0 mass exactly p_a that minimises the P1 mass (see module doc).

    Ball around c when sigma1 > sigma0, its complement when sigma1 < sigma0, the half-space
    <y, u> <= Phi^-1(p_a) when they are equal (Sukenik et al. 2022, Theorem 2; Cohen et al. 2019).
    """
    s0, s1, d, p, n = _validated(sigma0, sigma1, distance, p_a, dim)
    # kappa^2 - 1 = (s1 - s0)(s1 + s0)/s0^2 keeps its precision for nearby sigmas (bounds' form).
    km1 = (s1 - s0) * (s1 + s0) / (s0 * s0)
    if km1 == 0.0:
        return WorstCaseSet("half-space", 1.0, 0.0, float(special.ndtri(p)), math.inf, n)
    s = 1.0 if km1 > 0 else -1.0
    kind = "ball" if s > 0 else "complement"
    # Ball: P0(||y - c'||^2 <= q) = p, so q = isf(1 - p); complement: P0(... >= q) = p, q = isf(p).
    tail = 1.0 - p if s > 0 else p
    delta = d / s0
    if delta == 0.0:  # c = x0: a ball (or its complement) centred at x0, a central chi-square
        q = float(stats.chi2.isf(tail, n))
        return WorstCaseSet(kind, 0.0, s, s * (q - n), 0.0, n)
    m = delta / abs(km1)
    lam0 = m * m
    kappa = s1 / s0
    if lam0 >= bounds._ROUTE_FACTOR * max(1.0, kappa * kappa) * (n + 30.0):
        eta = _eta_integral(1.0 / m, s, p, n)
        # {y_1 + s mu ||y||^2/2 <= eta} = {y_1 + s mu (||y||^2 - N)/2 <= eta - s mu N/2}
        return WorstCaseSet(kind, 1.0, s / (2.0 * m), eta - s * n / (2.0 * m), m, n)
    q = float(stats.ncx2.isf(tail, n, lam0))
    # ||y||^2 + 2 s m y_1 + m^2 <= q (ball) or >= q (complement), divided by 2m:
    return WorstCaseSet(kind, 1.0, s / (2.0 * m), s * (q - lam0 - n) / (2.0 * m), m, n)


def _compute_dtype(device: torch.device) -> torch.dtype:
    """float64 wherever the device has it (MPS has not; the centred statistic then keeps float32)."""
    return torch.float32 if device.type == "mps" else torch.float64


class WorstCaseClassifier(nn.Module):
    """The base classifier f*: class A (0) on the worst-case set, class B (1) elsewhere.

    ``forward`` maps a batch [B, *shape] to logits [B, 2] = (-t, t) with t the set's statistic
    (A iff t <= 0; argmax takes the first index on ties, so the boundary belongs to A as in
    ``labels``). The statistic is computed in float64 (float32 on MPS) from the batch in any
    floating dtype on any device; the module has no parameters or buffers, x0 and u are moved to
    the batch's device on first use. Use it like any model with the engine (sample_counts,
    iter_certify, predict_points) or ``labels`` as a classifier callable.
    """

    def __init__(self, region: WorstCaseSet, x0: Tensor, direction: Tensor, sigma0: float):
        super().__init__()
        flat_x0 = x0.detach().reshape(-1).to("cpu", torch.float64)
        flat_u = direction.detach().reshape(-1).to("cpu", torch.float64)
        if flat_x0.numel() != region.dim or flat_u.numel() != region.dim:
            raise InvalidArgument(f"x0 and direction need {region.dim} entries")
        self.region = region
        self.sigma0 = float(sigma0)
        self.shape = tuple(x0.shape)
        self._x0 = flat_x0
        self._u = flat_u / torch.linalg.vector_norm(flat_u)
        self._moved: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}
        self.thread_safe = True  # pure function of the batch (the engine may call it from threads)

    def _constants(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        key = (device, dtype)
        if key not in self._moved:  # a benign race: both threads store equal tensors
            self._moved[key] = (self._x0.to(device, dtype), self._u.to(device, dtype))
        return self._moved[key]

    def statistic(self, batch: Tensor) -> Tensor:
        """lin*<y,u> + quad*(||y||^2 - N) - threshold with y = (z - x0)/sigma0; <= 0 means A."""
        dtype = _compute_dtype(batch.device)
        x0, u = self._constants(batch.device, dtype)
        y = (batch.reshape(batch.shape[0], -1).to(dtype) - x0) / self.sigma0
        r = self.region
        t = torch.full((y.shape[0],), -r.threshold, dtype=dtype, device=y.device)
        if r.lin != 0.0:
            t = t + r.lin * (y @ u)
        if r.quad != 0.0:
            t = t + r.quad * (torch.einsum("bi,bi->b", y, y) - r.dim)
        return t

    def forward(self, batch: Tensor) -> Tensor:
        t = self.statistic(batch)
        return torch.stack([-t, t], dim=1)

    def labels(self, batch: Tensor) -> Tensor:
        """int64 labels: CLASS_A where the statistic is <= 0, else CLASS_B."""
        return (self.statistic(batch) > 0).to(torch.int64)


class RampSigma(SigmaFunction):
    """sigma(x) = sigma0 * exp(rho * clamp(<x - x0, u>, 0, d)), rho = ln(sigma1/sigma0) / d.

    A sigma function that realises a witness: sigma(x0) = sigma0, sigma(x1) = sigma1, and its
    semi-elasticity is exactly |rho| (the clamped projection is 1-Lipschitz, with slope 1 along u
    between x0 and x1), the smallest any sigma with these two values can have.
    """

    def __init__(self, x0: Tensor, direction: Tensor, sigma0: float, sigma1: float, distance: float):
        self._x0 = x0.detach().reshape(-1).to("cpu", torch.float64)
        u = direction.detach().reshape(-1).to("cpu", torch.float64)
        self._u = u / torch.linalg.vector_norm(u)
        self.sigma0, self.sigma1, self.distance = float(sigma0), float(sigma1), float(distance)
        self.rho = math.log(self.sigma1 / self.sigma0) / self.distance if self.distance > 0 else 0.0
        self.r = abs(self.rho)
        self.spec = f"ramp:{self.sigma0!r},{self.sigma1!r},{self.distance!r}"

    def __call__(self, x: Tensor) -> Tensor:
        dtype = _compute_dtype(x.device)
        flat = x.reshape(x.shape[0], -1).to(dtype)
        t = ((flat - self._x0.to(x.device, dtype)) @ self._u.to(x.device, dtype)).clamp(0.0, self.distance)
        return (self.sigma0 * torch.exp(self.rho * t)).to(torch.float32)

    def params(self) -> dict:
        return {"kind": "ramp", "sigma0": self.sigma0, "sigma1": self.sigma1, "distance": self.distance}


# ---------------------------------------------------------------------------------------------
# Witness
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Witness:
    """An explicit base classifier f* and inputs x0, x1 at distance d, with sigma0 = sigma(x0), sigma1 = sigma(x1).

    ``p_x0`` = P(f*(x0 + sigma0 eps) = A) = p_a by construction; ``p_x1`` = P(f*(x1 + sigma1 eps)
    = A) = bounds.worst_case_probability. ``r`` is the semi-elasticity the sound radius is
    computed for (given, or the smallest admissible |ln(sigma1/sigma0)|/d); ``admissible`` says
    whether sigma1 at distance d is allowed by r. ``broken``: 0 < d < naive radius and
    p_x1 < 1/2, i.e. the naive certificate at x0 claims x1 but the smoothed classifier of f*
    with ``sigma_fn`` does not return A there.
    """

    x0: Tensor
    x1: Tensor
    sigma0: float
    sigma1: float
    distance: float
    p_a: float
    dim: int
    classifier: WorstCaseClassifier
    sigma_fn: RampSigma
    r: float
    admissible: bool
    p_x0: float
    p_x1: float
    naive_radius: float
    sound_radius: float
    broken: bool

    @property
    def region(self) -> WorstCaseSet:
        """The worst-case set the classifier labels A."""
        return self.classifier.region


def implied_semi_elasticity(sigma0: float, sigma1: float, distance: float) -> float:
    """|ln(sigma1/sigma0)| / d: the smallest r that allows sigma1 at distance d (0 when equal)."""
    if sigma1 == sigma0:
        return 0.0
    if distance <= 0:
        return math.inf
    return abs(math.log(sigma1 / sigma0)) / distance


def build_witness(
    dim: int,
    sigma0: float,
    p_a: float,
    distance: float,
    sigma1: float,
    *,
    r: float | None = None,
    shape: Sequence[int] | None = None,
    x0: Tensor | None = None,
    direction: Tensor | None = None,
) -> Witness:
    """The worst-case classifier for (dim, sigma0, p_a, distance, sigma1) and what it shows.

    x0 defaults to the centre 0.5 of the pixel cube (exact in float32) and the direction to the
    first coordinate; x1 = x0 + d u (float64; the engine samples around its float32 rounding, a
    relative change of the distance of at most 2^-24 (0.5 + d)/d, far below Monte Carlo
    resolution). distance 0 needs sigma1 = sigma0 (one input has one sigma).
    """
    s0, s1, d, p, n = _validated(sigma0, sigma1, distance, p_a, dim)
    if d == 0.0 and s1 != s0:
        raise InvalidArgument("distance = 0 needs sigma1 = sigma0: one input has one sigma")
    shape = (n,) if shape is None else tuple(int(v) for v in shape)
    if math.prod(shape) != n:
        raise InvalidArgument(f"shape {shape} does not have dim = {n} entries")
    x0 = torch.full(shape, 0.5, dtype=torch.float64) if x0 is None else x0.detach().to("cpu", torch.float64)
    if direction is None:
        direction = torch.zeros(shape, dtype=torch.float64)
        direction.view(-1)[0] = 1.0
    direction = direction.detach().to("cpu", torch.float64)
    if tuple(x0.shape) != shape or tuple(direction.shape) != shape:
        raise InvalidArgument(f"x0 and direction must have shape {shape}")
    norm = float(torch.linalg.vector_norm(direction))
    if not (norm > 0 and math.isfinite(norm)):
        raise InvalidArgument("direction must be a non-zero finite vector")
    u = direction / norm
    implied = implied_semi_elasticity(s0, s1, d)
    if r is None:
        r_used = implied
    else:
        r_used = float(r)
        if not (r_used >= 0 and math.isfinite(r_used)):
            raise InvalidArgument(f"r = {r} must be a finite number >= 0")
    # admissible up to rounding of the implied value: sigma1 lies in [s0 e^{-r d}, s0 e^{r d}]
    admissible = implied <= r_used * (1 + 1e-12)
    region = worst_case_set(s0, s1, d, p, n)
    p_x1 = float(bounds.worst_case_probability(s0, s1, d, p, n))
    naive = float(bounds.naive_radius(p, s0)) if p > 0.5 else 0.0
    sound = float(bounds.input_dependent_radius(p, s0, r_used, n))
    return Witness(
        x0=x0, x1=x0 + d * u, sigma0=s0, sigma1=s1, distance=d, p_a=p, dim=n,
        classifier=WorstCaseClassifier(region, x0, u, s0), sigma_fn=RampSigma(x0, u, s0, s1, d),
        r=r_used, admissible=admissible, p_x0=p, p_x1=p_x1, naive_radius=naive, sound_radius=sound,
        broken=bool(0.0 < d < naive and p_x1 < 0.5),
    )


# ---------------------------------------------------------------------------------------------
# Search: which (distance, sigma1) pairs break a naive certificate
# ---------------------------------------------------------------------------------------------


def breaks_naive(p_a: ArrayLike, sigma0: ArrayLike, sigma1: ArrayLike, distance: ArrayLike,
                 dim: ArrayLike) -> NDArray[np.bool_]:
    """Where (distance, sigma1) breaks the naive certificate of (p_a, sigma0): 0 < d < naive, worst < 1/2.

    Broadcasts like numpy; the worst case is bounds.worst_case_probability.
    """
    p = np.asarray(p_a, dtype=float)
    d = np.asarray(distance, dtype=float)
    naive = np.where(p > 0.5, bounds.naive_radius(np.clip(p, 0.5, 1.0), sigma0), 0.0)
    worst = bounds.worst_case_probability(sigma0, sigma1, d, p, dim)
    return _out(np.asarray((d > 0) & (d < naive) & (worst < 0.5)))


@dataclass(frozen=True)
class BandSearch:
    """Breaking distances of naive certificates for a sigma of semi-elasticity r (arrays, broadcast).

    ``smallest_breaking_distance``: the infimum of d < naive radius at which some sigma1 in
    [sigma0 e^{-r d}, sigma0 e^{r d}] gives a worst case below 1/2 (inf where none does: r = 0,
    p_a <= 1/2, p_a = 1); ``breaking_sigma1`` is the band end that breaks there (nan where
    none); ``surviving_radius`` = min(naive radius, smallest breaking distance), the largest
    radius up to which the naive claim is not refuted by any admissible pair.
    """

    naive_radius: Array
    smallest_breaking_distance: Array
    breaking_sigma1: Array
    surviving_radius: Array


def _band_ends_worst(d: Array, p: Array, s0: Array, r: Array, n: Array) -> tuple[Array, Array]:
    """Worst case at the lower and at the upper end of the sigma1 band at distance d."""
    with np.errstate(over="ignore"):
        low = bounds.worst_case_probability(s0, s0 * np.exp(-r * d), d, p, n)
        high = bounds.worst_case_probability(s0, np.minimum(s0 * np.exp(r * d), np.finfo(float).max),
                                             d, p, n)
    return np.asarray(low, dtype=float), np.asarray(high, dtype=float)


def search_band(p_a: ArrayLike, sigma0: ArrayLike, r: ArrayLike, dim: ArrayLike,
                rtol: float = 1e-13) -> BandSearch:
    """Smallest distance at which an r-semi-elastic sigma can break the naive certificate.

    Bisection in d on (0, naive radius) of min(worst case at the two band ends) - 1/2: positive
    at d = 0 (p_a > 1/2), <= 0 at the naive radius (sigma1 = sigma0 gives exactly 1/2 there and
    an end is lower). The band ends are the binding sigma1 (Sukenik et al. 2022, Theorem 3;
    tests/test_witness.py checks dense (d, sigma1) grids inside the band). For a semi-elastic
    sigma this is where the sound certificate ends: it equals bounds.input_dependent_radius up
    to the solvers' tolerances. Vectorised over broadcast arrays.
    """
    p = np.asarray(p_a, dtype=float)
    s0 = np.asarray(sigma0, dtype=float)
    rr = np.asarray(r, dtype=float)
    n = np.asarray(dim)
    for name, v, ok in (("p_a", p, (p >= 0) & (p <= 1)), ("sigma0", s0, (s0 > 0) & np.isfinite(s0)),
                        ("r", rr, (rr >= 0) & np.isfinite(rr))):
        if not np.all(ok):
            raise InvalidArgument(f"{name} = {v[~ok].ravel()[0] if v.ndim else float(v)} is out of range")
    p, s0, rr, n = np.broadcast_arrays(p, s0, rr, n)
    shape = p.shape
    p, s0, rr, n = (v.ravel() for v in (p, s0, rr, n))
    naive = np.where(p > 0.5, bounds.naive_radius(np.clip(p, 0.5, 1.0), s0), 0.0)
    smallest = np.full(p.shape, np.inf)
    which = np.full(p.shape, np.nan)
    todo = np.flatnonzero((p > 0.5) & (p < 1.0) & (rr > 0))
    if todo.size:
        pp, ss, r_, nn = p[todo], s0[todo], rr[todo], n[todo]
        lo, hi = np.zeros(todo.size), naive[todo].copy()
        low, high = _band_ends_worst(hi, pp, ss, r_, nn)
        breaks_at_hi = np.minimum(low, high) < 0.5
        for _ in range(200):
            active = breaks_at_hi & (hi - lo > rtol * hi)
            if not active.any():
                break
            mid = 0.5 * (lo + hi)
            a, b = _band_ends_worst(mid, pp, ss, r_, nn)
            below = np.minimum(a, b) < 0.5
            hi = np.where(active & below, mid, hi)
            lo = np.where(active & ~below, mid, lo)
        a, b = _band_ends_worst(hi, pp, ss, r_, nn)
        end = np.where(a <= b, ss * np.exp(-r_ * hi), ss * np.exp(r_ * hi))
        smallest[todo] = np.where(breaks_at_hi, hi, np.inf)
        which[todo] = np.where(breaks_at_hi, end, np.nan)
    surviving = np.minimum(naive, smallest)
    return BandSearch(*(_out(v.reshape(shape)) for v in (naive, smallest, which, surviving)))


def band_grid(p_a: float, sigma0: float, r: float, dim: int, distances: ArrayLike,
              num_sigma1: int = 41) -> tuple[Array, Array, Array, NDArray[np.bool_]]:
    """Every (d, sigma1) on a grid inside the band of an r-semi-elastic sigma, with its worst case.

    Returns (d, sigma1, worst, broken), each of shape (len(distances), num_sigma1): sigma1 runs
    log-uniformly from sigma0 e^{-r d} to sigma0 e^{r d} (ends included, sigma0 in the middle
    for odd num_sigma1).
    """
    d = np.asarray(distances, dtype=float).reshape(-1, 1)
    t = np.linspace(-1.0, 1.0, int(num_sigma1)).reshape(1, -1)
    sigma1 = float(sigma0) * np.exp(float(r) * d * t)
    d = np.broadcast_to(d, sigma1.shape)
    worst = np.asarray(bounds.worst_case_probability(sigma0, sigma1, d, p_a, dim), dtype=float)
    return d, sigma1, worst, np.asarray(breaks_naive(p_a, sigma0, sigma1, d, dim))


@dataclass(frozen=True)
class PointSearch:
    """Actual points x_i (distance d_i to x0, sigma_i = sigma(x_i)) against a naive certificate at x0.

    ``worst`` and ``broken`` per point; ``nearest_breaking`` is the index of the closest point
    that breaks it (-1 if none), ``smallest_breaking_distance`` its distance (inf if none) and
    ``surviving_radius`` = min(naive radius, that distance).
    """

    naive_radius: float
    worst: Array
    broken: NDArray[np.bool_]
    nearest_breaking: int
    smallest_breaking_distance: float
    surviving_radius: float


def search_points(p_a: float, sigma0: float, dim: int, distance: ArrayLike, sigma1: ArrayLike
                  ) -> PointSearch:
    """Which of the given points (distances to x0 and their sigma) break the naive certificate at x0."""
    d = np.asarray(distance, dtype=float).ravel()
    s1 = np.asarray(sigma1, dtype=float).ravel()
    if d.shape != s1.shape:
        raise InvalidArgument("distance and sigma1 need one entry per point")
    naive = float(bounds.naive_radius(p_a, sigma0)) if p_a > 0.5 else 0.0
    worst = np.asarray(bounds.worst_case_probability(sigma0, s1, d, p_a, dim), dtype=float).reshape(d.shape)
    broken = (d > 0) & (d < naive) & (worst < 0.5)
    if broken.any():
        i = int(np.flatnonzero(broken)[np.argmin(d[broken])])
        smallest = float(d[i])
    else:
        i, smallest = -1, math.inf
    return PointSearch(naive, worst, broken, i, smallest, min(naive, smallest))


# ---------------------------------------------------------------------------------------------
# Verification by sampling (the engine on f*, in the real dimension)
# ---------------------------------------------------------------------------------------------


def issued_lower_bound(p_a: float, n: int, alpha: float, miss: float = 1e-6) -> float:
    """A value the sampled Clopper-Pearson lower bound at x0 exceeds with probability >= 1 - miss.

    The count of n samples of f* is Binomial(n, p_a); at its miss-quantile k the (1 - alpha)
    lower bound is CP(k) and CP is increasing in the count. CERTIFY then issues a naive radius of
    at least sigma0 * Phi^-1(this), so a witness distance below that is covered by the issued
    certificate with probability >= 1 - miss. Rule of thumb: CP falls about
    z_alpha sqrt(p_a (1 - p_a) / n) below p_a (p_a = 0.999, n = 1e4, alpha = 1e-3: 0.9972).
    """
    k = float(stats.binom.ppf(miss, int(n), p_a))
    return float(bounds.clopper_pearson_lower(k, n, alpha))


@dataclass(frozen=True)
class VerificationPlan:
    """What ``verify`` will show with probability >= 1 - failure_probability, before sampling.

    ``naive_radius_issued``: a lower bound on the naive radius CERTIFY issues at x0;
    ``upper_x1``: an upper bound on the sampled upper confidence bound of P(A) at x1;
    ``decisive``: d < naive_radius_issued and upper_x1 < 1/2.
    """

    naive_radius_issued: float
    upper_x1: float
    decisive: bool
    failure_probability: float


def plan_verification(witness: Witness, n: int = DEFAULT_N, alpha: float = DEFAULT_ALPHA,
                      n0: int = DEFAULT_N0, miss: float = 1e-6) -> VerificationPlan:
    """Whether ``verify(witness, n, alpha, n0=n0)`` is decisive, except with a small probability.

    Failure modes, each bounded: the x0 count falls below its miss-quantile (miss), the x1
    count rises above its (1 - miss)-quantile (miss), the n0 selection samples at x0 pick B
    (binomial tail of fewer than n0/2 votes for A).
    """
    lower = issued_lower_bound(witness.p_a, n, alpha, miss)
    issued = witness.sigma0 * float(special.ndtri(lower)) if lower > 0.5 else 0.0
    k1 = float(stats.binom.isf(miss, int(n), witness.p_x1))
    upper = float(clopper_pearson_upper(k1, n, alpha))
    selection = float(stats.binom.cdf(math.ceil(n0 / 2) - 1, int(n0), witness.p_a))
    return VerificationPlan(issued, upper, bool(witness.distance < issued and upper < 0.5),
                            2 * miss + selection)


@dataclass(frozen=True)
class Verification:
    """Monte Carlo check of a witness by the engine (counts are [A, B]).

    At x0: CERTIFY (n0 selection, n estimation samples, sigma from the witness's sigma function):
    ``predict_x0`` (CLASS_A, or -1 abstain), the (1 - alpha) lower bound ``p_a_lower`` and the
    naive and sound radii issued. At x1: n samples at sigma1, ``p_a_upper_x1`` the one-sided
    (1 - alpha) upper bound on P(A). Intervals are two-sided (1 - alpha) Clopper-Pearson.
    ``confirmed``: CERTIFY predicts A, its naive radius exceeds d, and P(A) at x1 is below 1/2 at
    level alpha, so the smoothed classifier does not return A at x1 although the issued naive
    certificate claims it does (both statements hold together with probability >= 1 - 2 alpha).
    """

    n0: int
    n: int
    alpha: float
    seed: int
    counts_x0: list[int]
    predict_x0: int
    p_a_lower: float
    naive_radius_issued: float
    sound_radius_issued: float
    interval_x0: tuple[float, float]
    counts_x1: list[int]
    p_a_upper_x1: float
    interval_x1: tuple[float, float]
    issued_covers_x1: bool
    x1_not_a: bool
    confirmed: bool
    seconds: float


def verify(
    witness: Witness,
    n: int = DEFAULT_N,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str = "cpu",
    n0: int = DEFAULT_N0,
) -> Verification:
    """Sample f* at x0 (CERTIFY) and at x1 with the engine in the witness's full dimension.

    Seeded like a certification run (point 0 is x0, point 1 is x1), so the counts depend only on
    (seed, n, n0). See ``plan_verification`` for choosing n and alpha: a witness is decisive when
    its distance is below sigma0 Phi^-1(issued_lower_bound(p_a, n, alpha)) and p_x1 lies a few
    sqrt(p_x1 (1 - p_x1) / n) below 1/2.
    """
    # Imported here: smoothviz.certify pulls in the store and data modules, which witness
    # construction and search do not need.
    from smoothviz.certify import STAGE_ESTIMATION, iter_certify, sample_counts
    from smoothviz.noise import derive_seed

    for name, value in (("n", n), ("n0", n0), ("batch_size", batch_size)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise InvalidArgument(f"{name} = {value} must be an integer >= 1")
    if not 0.0 < alpha < 1.0:
        raise InvalidArgument(f"alpha = {alpha} must be in (0, 1)")
    device = torch.device(device)
    t0 = time.perf_counter()
    result = next(iter_certify(
        witness.classifier, witness.x0[None].float(), [CLASS_A], [0], witness.sigma_fn, n0, n, alpha,
        2, batch_size, device, seed, witness.r, witness.dim,
    ))
    generator = torch.Generator(device=device)
    x1 = witness.x1[None].to(device=device, dtype=torch.float32)
    sigma1 = torch.tensor([witness.sigma1], dtype=torch.float32, device=device)
    counts_x1 = [int(c) for c in sample_counts(
        witness.classifier.to(device), x1, sigma1, n, 2, batch_size, generator,
        [derive_seed(seed, 1, STAGE_ESTIMATION)],
    ).cpu()[0]]
    k0, k1 = result.counts[CLASS_A], counts_x1[CLASS_A]
    lo0, hi0 = clopper_pearson_interval(k0, n, alpha)
    lo1, hi1 = clopper_pearson_interval(k1, n, alpha)
    upper = float(clopper_pearson_upper(k1, n, alpha))
    covers = result.predict == CLASS_A and witness.distance < result.naive_radius
    not_a = upper < 0.5
    return Verification(
        n0=int(n0), n=int(n), alpha=float(alpha), seed=int(seed), counts_x0=list(result.counts),
        predict_x0=result.predict, p_a_lower=result.p_a_lower, naive_radius_issued=result.naive_radius,
        sound_radius_issued=result.radius, interval_x0=(float(lo0), float(hi0)), counts_x1=counts_x1,
        p_a_upper_x1=upper, interval_x1=(float(lo1), float(hi1)), issued_covers_x1=bool(covers),
        x1_not_a=bool(not_a), confirmed=bool(covers and not_a), seconds=time.perf_counter() - t0,
    )
