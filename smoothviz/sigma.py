"""Sigma functions sigma(x) for (input-dependent) randomized smoothing and their semi-elasticity r.

``constant:S`` is Cohen et al. 2019 (r = 0). ``knn:SIGMA_B,R,K`` is the design of Sukenik et al.,
ICML 2022, Sec. 6: sigma(x) = sigma_b * exp(r * (mean distance from x to its k nearest training
points - m)). The mean kNN distance is 1-Lipschitz in x, so ln sigma is r-Lipschitz, i.e. sigma is
r-semi-elastic; clipping to [sigma_min, sigma_max] keeps that property.

``ddrs:SIGMA_MIN,SIGMA_MAX,G[,n=N][,alpha=A][,seed=S]`` is data-dependent smoothing (Alfarra et
al. 2022, smoothviz.ddrs): sigma(x) optimised per input for the base classifier, so building it
needs the model. It has no semi-elasticity (``r`` is None): only the naive certificate exists,
and a certification run stores a sound radius of 0 beside it. smoothviz.ddrs imports this module,
so it is imported here only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Sequence

import torch

from smoothviz.errors import SigmaSpecError

# The values a spec may hold. Inputs lie in [0, 1]^N, so sigma above SIGMA_MAX is noise alone and
# below SIGMA_MIN the float32 noise vanishes under the pixel values; r beyond R_MAX overflows exp
# for any nearest-neighbour distance. Widgets take their ranges from here, so any spec the library
# accepts fits them.
SIGMA_MIN, SIGMA_MAX = 1e-6, 100.0
R_MAX = 1000.0
M_MAX = 1e6
# span_warning speaks up when sigma(x) over the chosen points varies by more than this factor.
SPAN_WARNING_RATIO = 100.0
# Relative slack for values clipped exactly to a limit (float32 rounds 1e-6 just below it).
_LIMIT_SLACK = 1e-6

# Bytes one distance entry costs while a block is alive (cdist output, top-k buffers, masks).
_BYTES_PER_ENTRY = 16
_CPU_BUDGET = 256 * 2**20
_MAX_TRAIN_CHUNK = 8192


def _fixed_threads(device: torch.device):
    """On a CPU, one torch thread while kNN statistics are computed; elsewhere nothing.

    A BLAS matrix product (the distances) and torch's reductions round differently with
    different numbers of threads, so sigma(x) would change in its last bits with the threads of
    the process computing it: a run resumed by a process with other threads, or spread over
    ranks that share a machine's cores, would not sample with the sigma of a clean run. One
    thread makes the values a function of the data alone (on a given CPU and library).
    """
    if device.type != "cpu":
        return contextlib.nullcontext()
    from smoothviz.votes import one_torch_thread

    return one_torch_thread()


class SigmaFunction:
    """Base class: ``sigma(x)`` for a batch [B, ...] -> [B] on x's device; ``r`` its semi-elasticity.

    ``r`` None means no semi-elasticity is known (data-dependent sigma): only the naive
    certificate sigma(x) * Phi^-1(p_A) can be computed, and it is no guarantee.
    """

    r: float | None = 0.0
    spec: str = ""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def params(self) -> dict:
        """JSON-able parameters (the parsed spec with defaults such as m resolved)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


class Constant(SigmaFunction):
    """sigma(x) = sigma for every x (Cohen et al. 2019); semi-elasticity 0."""

    def __init__(self, sigma: float):
        _check_positive("sigma", sigma, f"constant:{sigma}")
        self.sigma = float(sigma)
        self.r = 0.0
        self.spec = canonical_spec(self.params())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), self.sigma, dtype=torch.float32, device=x.device)

    def params(self) -> dict:
        return {"kind": "constant", "sigma": self.sigma}


def default_chunk_size(device: torch.device) -> int:
    """Entries of one [points x training points] distance block that fit a memory budget.

    CPU: 256 MiB; CUDA: an eighth of the free memory, at most 2 GiB.
    """
    budget = _CPU_BUDGET
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = min(free // 8, 2 * 2**30)
    return max(1, int(budget // _BYTES_PER_ENTRY))


class KNN(SigmaFunction):
    """sigma(x) = clip(sigma_b * exp(r * (d_k(x) - m)), sigma_min, sigma_max) (Sukenik et al. 2022).

    d_k(x) is the mean Euclidean distance from x to its k nearest training points, computed on the
    device in blocks of at most ``chunk_size`` distances. ``m`` defaults to the mean of d_k over
    the training set where each training point excludes itself.

    A sweep over sigma_b and r needs d_k of the same points for every cell: ``remember_distances``
    keeps them, and ``with_parameters`` makes the sigma function of another (sigma_b, r, m,
    clipping) that shares the training points, their distances and the remembered ones, so the
    distances of one (data, k) are computed once and every cell's sigma(x) is exactly the one a
    separately built function gives.
    """

    def __init__(
        self,
        train_x: torch.Tensor,
        sigma_b: float,
        r: float,
        k: int = 20,
        m: float | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        chunk_size: int | None = None,
        device: str | torch.device | None = None,
    ):
        spec = f"knn:{sigma_b},{r},{k}"
        _check_positive("sigma_b", sigma_b, spec)
        _check_finite_nonneg("r", r, spec)
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise SigmaSpecError(f"sigma spec {spec!r}: k must be an integer >= 1")
        n_train = int(train_x.shape[0])
        check_knn_k(int(k), n_train, spec, leave_one_out=m is None)
        for name, value in (("min", sigma_min), ("max", sigma_max)):
            if value is not None:
                _check_positive(name, value, spec)
        if sigma_min is not None and sigma_max is not None and sigma_min > sigma_max:
            raise SigmaSpecError(f"sigma spec {spec!r}: min={sigma_min} exceeds max={sigma_max}")
        self.device = torch.device(device) if device is not None else train_x.device
        flat = train_x.reshape(n_train, -1).to(self.device, torch.float32)
        # Centering the data before the matrix-product distance formula reduces cancellation.
        with _fixed_threads(self.device):
            self._center = flat.mean(dim=0, keepdim=True)
        self._train = (flat - self._center).contiguous()
        self.sigma_b, self.r, self.k = float(sigma_b), float(r), int(k)
        self.sigma_min = None if sigma_min is None else float(sigma_min)
        self.sigma_max = None if sigma_max is None else float(sigma_max)
        self.chunk_size = int(chunk_size) if chunk_size else default_chunk_size(self.device)
        if self.chunk_size < 1:
            raise SigmaSpecError(f"chunk_size must be >= 1, got {chunk_size}")
        self._train_distance: torch.Tensor | None = None
        self._remembered: tuple[torch.Tensor, torch.Tensor] | None = None
        if m is None:
            distances = self.training_mean_distance()
            with _fixed_threads(self.device):
                m = float(distances.double().mean())
        elif not math.isfinite(m):
            raise SigmaSpecError(f"sigma spec {spec!r}: m must be finite")
        self.m = float(m)
        self.spec = canonical_spec(self.params())

    @property
    def num_train(self) -> int:
        """Number of training points the distances refer to."""
        return int(self._train.shape[0])

    def mean_distance(self, x: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Mean distance from each row of x to its k nearest training points, on x's device.

        ``exclude[b]`` >= 0 names a training index that row b must skip (x[b] is that training
        point); -1 skips nothing.
        """
        out_device = x.device
        flat = x.reshape(x.shape[0], -1).to(self.device, torch.float32)
        remembered = self._remembered
        if exclude is None and remembered is not None and flat.shape == remembered[0].shape \
                and torch.equal(flat, remembered[0]):
            return remembered[1].to(out_device)
        flat = flat - self._center
        if exclude is not None:
            exclude = exclude.to(self.device, torch.long)
        n = self.num_train
        train_chunk = min(n, _MAX_TRAIN_CHUNK, self.chunk_size)
        point_chunk = max(1, self.chunk_size // train_chunk)
        result = torch.empty(flat.shape[0], dtype=torch.float32, device=self.device)
        with _fixed_threads(self.device):
            self._blocks(flat, exclude, point_chunk, train_chunk, result)
        return result.to(out_device)

    def _blocks(self, flat: torch.Tensor, exclude: torch.Tensor | None, point_chunk: int, train_chunk: int,
                result: torch.Tensor) -> None:
        """``mean_distance`` block by block into ``result``."""
        n = self.num_train
        for p0 in range(0, flat.shape[0], point_chunk):
            xb = flat[p0: p0 + point_chunk]
            rows = torch.arange(xb.shape[0], device=self.device)
            best = torch.full((xb.shape[0], self.k), math.inf, device=self.device)
            for t0 in range(0, n, train_chunk):
                block = torch.cdist(xb, self._train[t0: t0 + train_chunk])
                if exclude is not None:
                    rel = exclude[p0: p0 + point_chunk] - t0
                    hit = (rel >= 0) & (rel < block.shape[1])
                    block[rows[hit], rel[hit]] = math.inf
                best = torch.topk(torch.cat([best, block], dim=1), self.k, dim=1, largest=False).values
            result[p0: p0 + xb.shape[0]] = best.mean(dim=1)

    def remember_distances(self, x: torch.Tensor) -> torch.Tensor:
        """d_k of the rows of x, computed now and kept: from then on ``mean_distance`` (and so
        sigma(x)) of exactly these inputs returns them without computing them again, in this
        function and in every one ``with_parameters`` makes from it. Returns them."""
        distances = self.mean_distance(x)
        inputs = x.detach().reshape(x.shape[0], -1).to(self.device, torch.float32).clone()
        self._remembered = (inputs, distances.detach().to(self.device))
        return distances

    def with_parameters(
        self,
        sigma_b: float,
        r: float,
        m: float | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
    ) -> KNN:
        """The sigma function of these training points and k with another sigma_b, r, clipping and
        m (default: this one's): it shares the training points, their distances and the remembered
        distances (nothing is computed again), checked as the constructor checks its arguments."""
        spec = f"knn:{sigma_b},{r},{self.k}"
        _check_positive("sigma_b", sigma_b, spec)
        _check_finite_nonneg("r", r, spec)
        for name, value in (("min", sigma_min), ("max", sigma_max)):
            if value is not None:
                _check_positive(name, value, spec)
        if sigma_min is not None and sigma_max is not None and sigma_min > sigma_max:
            raise SigmaSpecError(f"sigma spec {spec!r}: min={sigma_min} exceeds max={sigma_max}")
        if m is not None and not (isinstance(m, (int, float)) and math.isfinite(m)):
            raise SigmaSpecError(f"sigma spec {spec!r}: m must be finite")
        other = copy.copy(self)
        other.sigma_b, other.r = float(sigma_b), float(r)
        other.m = self.m if m is None else float(m)
        other.sigma_min = None if sigma_min is None else float(sigma_min)
        other.sigma_max = None if sigma_max is None else float(sigma_max)
        other.spec = canonical_spec(other.params())
        return other

    def training_mean_distance(self) -> torch.Tensor:
        """d_k of every training point with itself excluded (computed once, cached)."""
        if self._train_distance is None:
            idx = torch.arange(self.num_train, device=self.device)
            self._train_distance = self.mean_distance(self._train + self._center, exclude=idx)
        return self._train_distance

    def from_distance(self, d: torch.Tensor) -> torch.Tensor:
        """sigma as a function of the mean kNN distance d (the paper's formula, then clipping)."""
        s = self.sigma_b * torch.exp(self.r * (d - self.m))
        if self.sigma_min is not None or self.sigma_max is not None:
            s = s.clamp(min=self.sigma_min, max=self.sigma_max)
        return s

    def __call__(self, x: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        return self.from_distance(self.mean_distance(x, exclude=exclude))

    def training_sigma(self) -> torch.Tensor:
        """sigma of every training point with itself excluded from its neighbours (for training)."""
        return self.from_distance(self.training_mean_distance())

    def params(self) -> dict:
        return {
            "kind": "knn", "sigma_b": self.sigma_b, "r": self.r, "k": self.k, "m": self.m,
            "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
        }


def check_knn_k(k: int, n_train: int, spec: str, *, leave_one_out: bool = False) -> None:
    """k nearest neighbours need at least k training points (checked before any distance is computed).

    ``leave_one_out``: the distances are taken from training points to the others (the offset m
    computed from the data, or training sigmas), so only n_train - 1 neighbours exist.
    """
    available = n_train - 1 if leave_one_out else n_train
    if k > available:
        what = f"the {available} other training points" if leave_one_out else f"the {n_train} training points"
        raise SigmaSpecError(f"sigma spec {spec!r}: k={k} exceeds {what}"
                             + (" (m is computed leaving each training point out; give m= to use all)"
                                if leave_one_out else ""))


def _as_doubles(values: torch.Tensor | Sequence[float]) -> torch.Tensor:
    return torch.as_tensor(values).detach().to("cpu", torch.float64).reshape(-1)


def check_sigma_values(
    values: torch.Tensor | Sequence[float], spec: str, indices: Sequence[int] | None = None
) -> None:
    """Every sigma(x) is finite and within [SIGMA_MIN, SIGMA_MAX]; SigmaSpecError names the first
    point outside (``indices`` number the values; default their positions).

    A spec inside the limits can still give sigma(x) outside them (exp(r * (d - m)) overflows for a
    large r), so the values on the chosen points are checked before anything is sampled.
    """
    v = _as_doubles(values)
    inside = torch.isfinite(v) & (v >= SIGMA_MIN * (1 - _LIMIT_SLACK)) & (v <= SIGMA_MAX * (1 + _LIMIT_SLACK))
    if bool(inside.all()):
        return
    bad = (~inside).nonzero().reshape(-1)
    j = int(bad[0])
    where = indices[j] if indices is not None else j
    raise SigmaSpecError(
        f"sigma spec {spec!r}: sigma(x) = {float(v[j]):.3g} at point {where} is outside "
        f"[{SIGMA_MIN:g}, {SIGMA_MAX:g}] ({len(bad)} of {len(v)} points); use a smaller r or clip with min= and max="
    )


def span_warning(values: torch.Tensor | Sequence[float]) -> str | None:
    """A warning sentence when sigma(x) over the chosen points spans absurd values, else None.

    Absurd: the largest value is more than SPAN_WARNING_RATIO times the smallest, or some value
    sits at SIGMA_MIN or SIGMA_MAX (clipped there). Such a sigma function barely smooths some
    points and drowns others in noise; their certificates say little about the model.
    """
    v = _as_doubles(values)
    v = v[torch.isfinite(v) & (v > 0)]
    if not len(v):
        return None
    lo, hi = float(v.min()), float(v.max())
    at_min = lo <= SIGMA_MIN * (1 + 1e-3)
    at_max = hi >= SIGMA_MAX * (1 - 1e-3)
    if hi / lo <= SPAN_WARNING_RATIO and not (at_min or at_max):
        return None
    limits = [f"the limit {limit:g}" for limit, hit in ((SIGMA_MIN, at_min), (SIGMA_MAX, at_max)) if hit]
    reach = f", reaching {' and '.join(limits)}" if limits else ""
    return (f"sigma(x) spans {lo:.3g} to {hi:.3g} over the chosen points (a factor of {hi / lo:.3g}{reach}): "
            "some points are hardly smoothed and others drowned in noise; a smaller r keeps sigma(x) meaningful")


def _check_positive(name: str, value: float, spec: str) -> None:
    """A noise level: a number in [SIGMA_MIN, SIGMA_MAX]."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not math.isfinite(value) or value <= 0:
        raise SigmaSpecError(f"sigma spec {spec!r}: {name} must be a finite number > 0, got {value}")
    if not SIGMA_MIN <= value <= SIGMA_MAX:
        raise SigmaSpecError(f"sigma spec {spec!r}: {name} = {value:g} is outside [{SIGMA_MIN:g}, {SIGMA_MAX:g}] "
                             "(inputs are in [0, 1])")


def _check_finite_nonneg(name: str, value: float, spec: str) -> None:
    """A semi-elasticity: a number in [0, R_MAX]."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not math.isfinite(value) or value < 0:
        raise SigmaSpecError(f"sigma spec {spec!r}: {name} must be a finite number >= 0, got {value}")
    if value > R_MAX:
        raise SigmaSpecError(f"sigma spec {spec!r}: {name} = {value:g} exceeds {R_MAX:g}")


def _number(text: str, name: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SigmaSpecError(f"sigma spec {spec!r}: {name}={text.strip()!r} is not a number") from None


_USAGE = ("expected 'constant:SIGMA', 'knn:SIGMA_B,R,K[,m=M][,min=A][,max=B]' or "
          "'ddrs:SIGMA_MIN,SIGMA_MAX,G[,n=N][,alpha=A][,seed=S]'")


def parse_sigma_spec(spec: str) -> dict:
    """Parse ``constant:0.25``, ``knn:SIGMA_B,R,K[,m=M][,min=A][,max=B]`` or a ``ddrs:`` spec into a dict.

    Returns {"kind": "constant", "sigma"}, {"kind": "knn", "sigma_b", "r", "k", "m",
    "sigma_min", "sigma_max"} (absent options are None) or smoothviz.ddrs.parse_ddrs_spec's
    {"kind": "ddrs", "sigma_min", "sigma_max", "num_sigmas", "n", "alpha", "seed"}.
    SigmaSpecError names what is wrong.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise SigmaSpecError(f"sigma spec {spec!r}: {_USAGE}")
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "ddrs":
        from smoothviz.ddrs import parse_ddrs_spec  # it imports this module

        return parse_ddrs_spec(spec)
    parts = [p.strip() for p in rest.split(",")] if rest.strip() else []
    if kind == "constant":
        if len(parts) != 1:
            raise SigmaSpecError(f"sigma spec {spec!r}: constant takes exactly one value (sigma)")
        sigma = _number(parts[0], "sigma", spec)
        _check_positive("sigma", sigma, spec)
        return {"kind": "constant", "sigma": sigma}
    if kind != "knn":
        raise SigmaSpecError(f"sigma spec {spec!r}: unknown kind {kind!r}; {_USAGE}")
    positional = [p for p in parts if "=" not in p]
    options = [p for p in parts if "=" in p]
    if len(positional) != 3 or parts[:3] != positional:
        raise SigmaSpecError(f"sigma spec {spec!r}: knn takes SIGMA_B,R,K then optional "
                             "m=, min=, max=")
    sigma_b = _number(positional[0], "sigma_b", spec)
    r = _number(positional[1], "r", spec)
    k_value = _number(positional[2], "k", spec)
    _check_positive("sigma_b", sigma_b, spec)
    _check_finite_nonneg("r", r, spec)
    if not k_value.is_integer() or k_value < 1:
        raise SigmaSpecError(f"sigma spec {spec!r}: k must be an integer >= 1, got {positional[2]}")
    out = {"kind": "knn", "sigma_b": sigma_b, "r": r, "k": int(k_value),
           "m": None, "sigma_min": None, "sigma_max": None}
    keys = {"m": "m", "min": "sigma_min", "max": "sigma_max"}
    for option in options:
        key, _, value = (s.strip() for s in option.partition("="))
        if key not in keys:
            raise SigmaSpecError(f"sigma spec {spec!r}: unknown option {key!r} (m, min, max)")
        if out[keys[key]] is not None:
            raise SigmaSpecError(f"sigma spec {spec!r}: option {key!r} given twice")
        number = _number(value, key, spec)
        if key == "m":
            if not (math.isfinite(number) and abs(number) <= M_MAX):
                raise SigmaSpecError(f"sigma spec {spec!r}: m must be finite and within ±{M_MAX:g}")
        else:
            _check_positive(key, number, spec)
        out[keys[key]] = number
    if out["sigma_min"] is not None and out["sigma_max"] is not None \
            and out["sigma_min"] > out["sigma_max"]:
        raise SigmaSpecError(f"sigma spec {spec!r}: min exceeds max")
    return out


def canonical_spec(params: dict) -> str:
    """The spec string for parsed parameters; ``parse_sigma_spec`` gives the same parameters back."""
    if params["kind"] == "constant":
        return f"constant:{params['sigma']!r}"
    if params["kind"] == "ddrs":
        from smoothviz.ddrs import canonical_ddrs_spec  # it imports this module

        return canonical_ddrs_spec(params)
    text = f"knn:{params['sigma_b']!r},{params['r']!r},{params['k']}"
    for key, name in (("m", "m"), ("sigma_min", "min"), ("sigma_max", "max")):
        if params.get(key) is not None:
            text += f",{name}={params[key]!r}"
    return text


def semi_elasticity(params: dict) -> float | None:
    """The semi-elasticity r a parsed spec declares: 0 for constant, its r for knn, None for ddrs."""
    if params["kind"] == "constant":
        return 0.0
    if params["kind"] == "ddrs":
        return None
    return float(params["r"])


def build_sigma(
    spec: str,
    train_x: torch.Tensor | None = None,
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
    model: torch.nn.Module | None = None,
) -> SigmaFunction:
    """A sigma function from its spec; knn needs the training inputs (on ``device`` if given),
    ddrs the base classifier ``model`` whose certificate it optimises (on the device it runs on)."""
    params = parse_sigma_spec(spec)
    if params["kind"] == "constant":
        return Constant(params["sigma"])
    if params["kind"] == "ddrs":
        if model is None:
            raise SigmaSpecError(f"sigma spec {spec!r}: ddrs needs the base classifier (it optimises sigma(x) "
                                 "for that model); give the model")
        from smoothviz.ddrs import build_ddrs  # it imports this module

        return build_ddrs(params, model)
    if train_x is None:
        raise SigmaSpecError(f"sigma spec {spec!r}: knn needs the training data of the dataset")
    return KNN(
        train_x, params["sigma_b"], params["r"], params["k"], m=params["m"],
        sigma_min=params["sigma_min"], sigma_max=params["sigma_max"],
        chunk_size=chunk_size, device=device,
    )
