"""Data-dependent smoothing: sigma(x) chosen per input by optimising the certificate.

Alfarra, Bibi, Torr and Ghanem, "Data dependent randomized smoothing" (UAI 2022) choose, for
each input x, the sigma that maximises the certified radius sigma * Phi^-1(p_A(x, sigma)) of
the given base classifier, and certify x with Cohen's formula at that sigma. Sukenik,
Kuvshinov and Guennemann (ICML 2022, Sec. 4) show that such a certificate is not justified:
sigma(x) then changes abruptly between nearby inputs (it has no useful semi-elasticity), and the
naive radius sigma(x) * Phi^-1(p_A) is all that can be reported. This module implements the
method so that its sigma can be audited (smoothviz.audit) and its certificates refuted
(smoothviz.witness).

Here the optimisation runs over a log-spaced grid of sigmas: for each grid value, ``num_samples``
noisy copies x + sigma eps are classified, p_A(sigma) is the Clopper-Pearson lower bound (level
alpha) of the top class's count, and sigma(x) is the grid value with the largest
sigma * Phi^-1(p_A(sigma)) (the smallest on ties). The noise eps is drawn once from ``seed`` and
shared by every input and every grid value (common random numbers), so sigma(x) is a
deterministic function of x, as the certificate assumes, and cheap: a 10-value grid with 256
samples is 2560 forward passes per input.

Proposed spec (registered in smoothviz.sigma later): ``ddrs:SIGMA_MIN,SIGMA_MAX,G[,n=N][,alpha=A]
[,seed=S]``, parsed by ``parse_ddrs_spec``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import special
from torch import Tensor, nn

from smoothviz import bounds
from smoothviz.errors import SigmaSpecError
from smoothviz.sigma import SIGMA_MAX, SIGMA_MIN, SigmaFunction
from smoothviz.votes import Classifier, argmax_classifier

__all__ = ["DataDependentSigma", "build_ddrs", "canonical_ddrs_spec", "parse_ddrs_spec"]

DEFAULT_NUM_SIGMAS = 10
DEFAULT_SAMPLES = 256
DEFAULT_ALPHA = 1e-3
MAX_NUM_SIGMAS = 1000
MAX_SAMPLES = 10**6


class DataDependentSigma(SigmaFunction):
    """sigma(x) = argmax over ``sigmas`` of sigma * Phi^-1(p_A(x, sigma)) (Alfarra et al. 2022).

    ``model`` is an nn.Module (argmax of its logits) or a classifier callable returning labels.
    ``r`` is None: the semi-elasticity is unknown (and in truth unbounded, as sigma jumps between
    grid values), so only the naive certificate exists.
    """

    r = None  # type: ignore[assignment]  # no semi-elasticity: the naive certificate only

    def __init__(
        self,
        model: nn.Module | Classifier,
        sigmas: Sequence[float],
        num_samples: int = DEFAULT_SAMPLES,
        alpha: float = DEFAULT_ALPHA,
        seed: int = 0,
        batch_size: int = 4096,
    ):
        grid = sorted(float(s) for s in sigmas)
        if not grid or any(not (SIGMA_MIN <= s <= SIGMA_MAX) for s in grid):
            raise SigmaSpecError(f"ddrs sigmas must be a non-empty list within [{SIGMA_MIN:g}, {SIGMA_MAX:g}]")
        if isinstance(num_samples, bool) or int(num_samples) != num_samples or not 1 <= num_samples <= MAX_SAMPLES:
            raise SigmaSpecError(f"ddrs n must be an integer in [1, {MAX_SAMPLES}], got {num_samples}")
        if not 0.0 < alpha < 1.0:
            raise SigmaSpecError(f"ddrs alpha must be in (0, 1), got {alpha}")
        if int(batch_size) < 1:
            raise SigmaSpecError(f"ddrs batch_size must be >= 1, got {batch_size}")
        self.classify = argmax_classifier(model.eval()) if isinstance(model, nn.Module) else model
        self.sigmas = grid
        self.num_samples, self.alpha, self.seed = int(num_samples), float(alpha), int(seed)
        self.batch_size = int(batch_size)
        self._noise: dict[tuple[tuple[int, ...], torch.device], Tensor] = {}
        self.spec = canonical_ddrs_spec(self.params()) if _is_log_grid(grid) else f"ddrs:{grid}"

    def noise(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        """The shared eps [num_samples, *shape], drawn once on the CPU from the seed (any device alike)."""
        key = (tuple(shape), device)
        if key not in self._noise:
            gen = torch.Generator().manual_seed(self.seed)
            self._noise[key] = torch.randn((self.num_samples, *shape), generator=gen).to(device)
        return self._noise[key]

    def objective(self, x: Tensor) -> Tensor:
        """sigma * Phi^-1(p_A lower bound) for every input and grid value: float64 [B, G] on the CPU."""
        shape = tuple(x.shape[1:])
        eps = self.noise(shape, x.device)
        grid = torch.tensor(self.sigmas, dtype=x.dtype, device=x.device)
        per_point = len(self.sigmas) * self.num_samples
        chunk = max(1, self.batch_size // per_point)
        tops = []
        with torch.inference_mode():
            for start in range(0, x.shape[0], chunk):
                xs = x[start:start + chunk]
                # [b, G, n, *shape]: x + sigma_g eps_j
                spread = (1, -1, 1) + (1,) * len(shape)
                noisy = xs[:, None, None] + grid.view(spread) * eps[None, None]
                flat = noisy.reshape(-1, *shape)
                labels = torch.cat([self.classify(flat[i:i + self.batch_size])
                                    for i in range(0, flat.shape[0], self.batch_size)])
                labels = labels.view(-1, self.num_samples)  # one row per (point, sigma)
                width = int(labels.max()) + 1
                counts = torch.zeros((labels.shape[0], width), dtype=torch.int64, device=labels.device)
                counts.scatter_add_(1, labels, torch.ones_like(labels))
                tops.append(counts.max(dim=1).values.view(xs.shape[0], len(self.sigmas)).cpu())
        top = torch.cat(tops).numpy().astype(np.float64)
        lower = np.asarray(bounds.clopper_pearson_lower(top, self.num_samples, self.alpha), dtype=np.float64)
        with np.errstate(divide="ignore"):
            value = np.asarray(self.sigmas)[None, :] * special.ndtri(lower)
        return torch.from_numpy(value)

    def __call__(self, x: Tensor) -> Tensor:
        value = self.objective(x)
        best = torch.argmax(value, dim=1)  # first maximum: the smallest sigma on ties
        return torch.tensor(self.sigmas, dtype=torch.float32)[best].to(x.device)

    def params(self) -> dict:
        return {"kind": "ddrs", "sigma_min": self.sigmas[0], "sigma_max": self.sigmas[-1],
                "num_sigmas": len(self.sigmas), "n": self.num_samples, "alpha": self.alpha, "seed": self.seed}


def log_grid(sigma_min: float, sigma_max: float, num: int) -> list[float]:
    """``num`` log-spaced values from sigma_min to sigma_max, both included."""
    if num == 1:
        return [float(sigma_min)]
    return [float(v) for v in np.geomspace(sigma_min, sigma_max, int(num))]


def _is_log_grid(grid: list[float]) -> bool:
    return np.allclose(grid, log_grid(grid[0], grid[-1], len(grid)), rtol=1e-12, atol=0.0)


_USAGE = "expected 'ddrs:SIGMA_MIN,SIGMA_MAX,G[,n=N][,alpha=A][,seed=S]'"


def parse_ddrs_spec(spec: str) -> dict:
    """``ddrs:SIGMA_MIN,SIGMA_MAX,G[,n=N][,alpha=A][,seed=S]`` as a dict; SigmaSpecError names the fault.

    Returns {"kind": "ddrs", "sigma_min", "sigma_max", "num_sigmas", "n", "alpha", "seed"} with
    the defaults n = 256, alpha = 0.001, seed = 0 filled in.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise SigmaSpecError(f"sigma spec {spec!r}: {_USAGE}")
    kind, _, rest = spec.strip().partition(":")
    if kind.strip().lower() != "ddrs":
        raise SigmaSpecError(f"sigma spec {spec!r}: {_USAGE}")
    parts = [p.strip() for p in rest.split(",")] if rest.strip() else []
    positional = [p for p in parts if "=" not in p]
    if len(positional) != 3 or parts[:3] != positional:
        raise SigmaSpecError(f"sigma spec {spec!r}: ddrs takes SIGMA_MIN,SIGMA_MAX,G then optional n=, alpha=, seed=")
    values = []
    for name, text in zip(("sigma_min", "sigma_max", "G"), positional):
        try:
            values.append(float(text))
        except ValueError:
            raise SigmaSpecError(f"sigma spec {spec!r}: {name}={text!r} is not a number") from None
    lo, hi, g = values
    for name, v in (("sigma_min", lo), ("sigma_max", hi)):
        if not (math.isfinite(v) and SIGMA_MIN <= v <= SIGMA_MAX):
            raise SigmaSpecError(f"sigma spec {spec!r}: {name} = {v:g} is outside [{SIGMA_MIN:g}, {SIGMA_MAX:g}]")
    if lo > hi:
        raise SigmaSpecError(f"sigma spec {spec!r}: sigma_min exceeds sigma_max")
    if not (g.is_integer() and 1 <= g <= MAX_NUM_SIGMAS):
        raise SigmaSpecError(f"sigma spec {spec!r}: G must be an integer in [1, {MAX_NUM_SIGMAS}]")
    out = {"kind": "ddrs", "sigma_min": lo, "sigma_max": hi, "num_sigmas": int(g),
           "n": DEFAULT_SAMPLES, "alpha": DEFAULT_ALPHA, "seed": 0}
    seen: set[str] = set()
    for option in parts[3:]:
        key, _, text = (s.strip() for s in option.partition("="))
        if key not in ("n", "alpha", "seed"):
            raise SigmaSpecError(f"sigma spec {spec!r}: unknown option {key!r} (n, alpha, seed)")
        if key in seen:
            raise SigmaSpecError(f"sigma spec {spec!r}: option {key!r} given twice")
        seen.add(key)
        try:
            number = float(text)
        except ValueError:
            raise SigmaSpecError(f"sigma spec {spec!r}: {key}={text!r} is not a number") from None
        if key == "alpha":
            if not 0.0 < number < 1.0:
                raise SigmaSpecError(f"sigma spec {spec!r}: alpha must be in (0, 1)")
            out["alpha"] = number
        elif key == "n":
            if not (number.is_integer() and 1 <= number <= MAX_SAMPLES):
                raise SigmaSpecError(f"sigma spec {spec!r}: n must be an integer in [1, {MAX_SAMPLES}]")
            out["n"] = int(number)
        else:
            if not (number.is_integer() and 0 <= number < 2**63):
                raise SigmaSpecError(f"sigma spec {spec!r}: seed must be an integer >= 0")
            out["seed"] = int(number)
    return out


def canonical_ddrs_spec(params: dict) -> str:
    """The spec of parsed parameters; ``parse_ddrs_spec`` gives the same parameters back."""
    return (f"ddrs:{params['sigma_min']!r},{params['sigma_max']!r},{params['num_sigmas']},"
            f"n={params['n']},alpha={params['alpha']!r},seed={params['seed']}")


def build_ddrs(spec: str | dict, model: nn.Module | Classifier, batch_size: int = 4096) -> DataDependentSigma:
    """The data-dependent sigma of a spec (or parsed parameters) for the base classifier ``model``."""
    params = parse_ddrs_spec(spec) if isinstance(spec, str) else dict(spec)
    grid = log_grid(params["sigma_min"], params["sigma_max"], params["num_sigmas"])
    return DataDependentSigma(model, grid, num_samples=params["n"], alpha=params["alpha"],
                              seed=params["seed"], batch_size=batch_size)
