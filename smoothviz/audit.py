"""Semi-elasticity audit: a lower bound on r for any sigma function, found from data.

The sound input-dependent certificate (Sukenik et al., ICML 2022, Theorem 3) needs a sigma that
is r-semi-elastic, |ln sigma(x) - ln sigma(y)| <= r ||x - y|| for all x, y, with r known. A
declared r can be wrong, and sigmas chosen by optimisation per input (smoothviz.ddrs) declare
none. Every pair of points gives the lower bound |ln sigma(x) - ln sigma(y)| / ||x - y|| on the
true r; this module searches for pairs that make it large:

- random pairs of data points;
- consecutive points along segments from data points toward training points;
- small random perturbations of data points at several scales;
- gradient ascent on ||grad ln sigma|| where sigma is differentiable (torch autograd; the
  ascent direction H g/||g|| by a Hessian-vector product), reading a secant pair at each step;
- bisection of the best segments: of the two halves of a segment, the one with the larger
  |change| has a ratio at least the whole segment's, so a jump of sigma is localised to the
  smallest length allowed (``min_distance``).

The result is a lower bound on r (every value is a secant between two evaluated points), never
an estimate from above: a declared r below it is certainly wrong. To keep it a lower bound under
floating point, each pair's |change of ln sigma| is reduced by ``allowance`` (default 2^-16, some
hundred float32 ulps of sigma) before dividing, and pairs are never shorter than ``min_distance``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from smoothviz.errors import InvalidArgument

__all__ = ["AuditPair", "SigmaAudit", "audit_record", "audit_sigma", "audit_warning"]

SigmaCallable = Callable[[Tensor], Tensor]
DEFAULT_ALLOWANCE = 2.0**-16


@dataclass(frozen=True)
class AuditPair:
    """Two inputs and the lower bound on r they give (inputs on the CPU, in the data's shape)."""

    x: Tensor
    y: Tensor
    sigma_x: float
    sigma_y: float
    distance: float
    ratio: float
    method: str


@dataclass(frozen=True)
class SigmaAudit:
    """The audit's lower bound on the semi-elasticity and how it was found.

    ``semi_elasticity`` is the largest ratio found (``pair`` attains it); ``by_method`` the best
    ratio of each search; ``flagged`` is true when no r is declared (None: only the naive
    certificate exists) or the declared r is below the audit; ``notes`` say what was skipped.
    """

    semi_elasticity: float
    pair: AuditPair | None
    declared_r: float | None
    flagged: bool
    by_method: dict[str, float]
    evaluations: int
    notes: list[str] = field(default_factory=list)


class _Evaluator:
    """ln sigma of batches (float64 on the CPU), counting evaluations and checking the values."""

    def __init__(self, sigma_fn: SigmaCallable, device: torch.device, batch_size: int):
        self.sigma_fn, self.device, self.batch_size = sigma_fn, device, batch_size
        self.count = 0

    def __call__(self, x: Tensor) -> Tensor:
        out = []
        with torch.no_grad():
            for start in range(0, x.shape[0], self.batch_size):
                chunk = x[start:start + self.batch_size].to(self.device)
                s = self.sigma_fn(chunk).reshape(-1).detach().to("cpu", torch.float64)
                if s.shape[0] != chunk.shape[0] or not bool(torch.all(torch.isfinite(s) & (s > 0))):
                    raise InvalidArgument("the sigma function must return one finite value > 0 per input")
                out.append(s.log())
        self.count += x.shape[0]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


class _Best:
    """The best pair seen per method and overall, plus candidates for bisection."""

    def __init__(self, allowance: float, min_distance: float, keep: int):
        self.allowance, self.min_distance, self.keep = allowance, min_distance, keep
        self.by_method: dict[str, float] = {}
        self.pair: AuditPair | None = None
        self.candidates: list[tuple[float, Tensor, Tensor, float, float]] = []

    def ratios(self, dist: Tensor, change: Tensor) -> Tensor:
        r = (change.abs() - self.allowance).clamp(min=0.0) / dist
        return torch.where(dist >= self.min_distance, r, torch.zeros_like(r))

    def add(self, method: str, x: Tensor, y: Tensor, lx: Tensor, ly: Tensor) -> None:
        """Pairs (x[i], y[i]) with ln sigma lx[i], ly[i]."""
        if x.shape[0] == 0:
            return
        dist = torch.linalg.vector_norm((x - y).reshape(x.shape[0], -1).double(), dim=1)
        change = lx - ly
        ratio = self.ratios(dist, change)
        self.by_method[method] = max(self.by_method.get(method, 0.0), float(ratio.max()))
        order = torch.argsort(ratio, descending=True)[: self.keep]
        for i in order.tolist():
            if ratio[i] <= 0:
                break
            self.candidates.append((float(ratio[i]), x[i], y[i], float(lx[i]), float(ly[i])))
        self.candidates.sort(key=lambda c: -c[0])
        del self.candidates[self.keep:]
        i = int(torch.argmax(ratio))
        if float(ratio[i]) > 0 and (self.pair is None or float(ratio[i]) > self.pair.ratio):
            self.pair = AuditPair(x[i].clone(), y[i].clone(), math.exp(float(lx[i])), math.exp(float(ly[i])),
                                  float(dist[i]), float(ratio[i]), method)


def _typical_distance(data: Tensor) -> float:
    """Median nearest-neighbour distance among up to 256 data points (the scale of the search)."""
    flat = data[:256].reshape(min(256, data.shape[0]), -1).double()
    d = torch.cdist(flat, flat)
    d.fill_diagonal_(math.inf)
    nearest = d.min(dim=1).values
    nearest = nearest[torch.isfinite(nearest) & (nearest > 0)]
    if nearest.numel() == 0:
        raise InvalidArgument("the audit needs at least two distinct data points")
    return float(nearest.median())


def _bisect(ev: _Evaluator, best: _Best, x: Tensor, y: Tensor, lx: float, ly: float) -> None:
    """Halve the segment [x, y], keeping the half with the larger |change|, down to min_distance."""
    lx_t, ly_t = torch.tensor(lx, dtype=torch.float64), torch.tensor(ly, dtype=torch.float64)
    while True:
        length = float(torch.linalg.vector_norm((x - y).double()))
        if length / 2 < best.min_distance:
            return
        mid = 0.5 * (x + y)
        lm = ev(mid[None])[0]
        if (lm - lx_t).abs() >= (ly_t - lm).abs():
            y, ly_t = mid, lm
        else:
            x, lx_t = mid, lm
        best.add("bisection", x[None], y[None], lx_t[None], ly_t[None])


def _ascent(sigma_fn: SigmaCallable, ev: _Evaluator, best: _Best, starts: Tensor, steps: int,
            step: float, secant: float, box: tuple[float, float] | None, device: torch.device,
            notes: list[str]) -> None:
    """Gradient ascent on ||grad ln sigma(x)|| from several starts at once; secant pairs read along g."""
    x = starts.to(device, torch.float32).clone()
    for it in range(steps):
        x.requires_grad_(True)
        with torch.enable_grad():
            sig = sigma_fn(x).reshape(-1)
            ls = torch.log(sig)
            if not ls.requires_grad:
                notes.append("gradient ascent skipped: sigma is not differentiable (no autograd graph)")
                return
            (g,) = torch.autograd.grad(ls.sum(), x, create_graph=True)
            gn = torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1)
            ok = gn > 0
            if not bool(ok.any()):
                notes.append("gradient ascent stopped: zero gradient at every start")
                return
            v = torch.where(ok.view(-1, *[1] * (g.dim() - 1)), g / gn.clamp(min=1e-30).view(-1, *[1] * (g.dim() - 1)),
                            torch.zeros_like(g)).detach()
            try:
                (hv,) = torch.autograd.grad((g * v).sum(), x)
            except RuntimeError:  # no double backward: Hessian-vector product by finite differences
                eps = 1e-3 * secant
                xe = (x.detach() + eps * v).requires_grad_(True)
                (ge,) = torch.autograd.grad(torch.log(sigma_fn(xe).reshape(-1)).sum(), xe)
                hv = (ge - g.detach()) / eps
        x = x.detach()
        ev.count += x.shape[0]  # the forward pass above evaluated sigma at every start
        y = x + secant * v
        best.add("gradient ascent", x.cpu(), y.cpu(), sig.detach().cpu().double().log(), ev(y))
        hn = torch.linalg.vector_norm(hv.reshape(hv.shape[0], -1), dim=1).clamp(min=1e-30)
        x = x + (step * (1 - it / steps)) * hv / hn.view(-1, *[1] * (hv.dim() - 1))
        if box is not None:
            x = x.clamp(box[0], box[1])


def audit_sigma(
    sigma_fn: SigmaCallable,
    data: Tensor,
    *,
    train: Tensor | None = None,
    declared_r: float | None = None,
    seed: int = 0,
    num_pairs: int = 1024,
    num_segments: int = 64,
    segment_points: int = 16,
    num_perturbations: int = 128,
    ascent_starts: int = 16,
    ascent_steps: int = 40,
    refine: int = 8,
    box: tuple[float, float] | None | str = "data",
    allowance: float = DEFAULT_ALLOWANCE,
    min_distance: float | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 512,
) -> SigmaAudit:
    """A lower bound on the semi-elasticity of ``sigma_fn`` (batch [B, *shape] -> sigma [B]).

    ``data``: inputs to search around (e.g. test points); ``train``: the targets of the segments
    (default ``data``). ``declared_r`` defaults to ``sigma_fn.r`` (None where it has none).
    ``box``: the range the gradient ascent stays in, "data" for [min, max] of the data (the
    pixel range), None for unbounded; the bound holds for all of R^N either way. Distances are
    measured in the data's scale: perturbation radii and the ascent's step are fractions of the
    median nearest-neighbour distance, ``min_distance`` defaults to 1e-3 of it. Deterministic
    for a given seed.
    """
    if data.dim() < 2 or data.shape[0] < 2:
        raise InvalidArgument("data must hold at least two inputs [B, ...]")
    declared = declared_r if declared_r is not None else getattr(sigma_fn, "r", None)
    device = torch.device(device) if device is not None else data.device
    data = data.detach().to("cpu", torch.float32)
    train = data if train is None else train.detach().to("cpu", torch.float32)
    scale = _typical_distance(data)
    min_dist = 1e-3 * scale if min_distance is None else float(min_distance)
    if box == "data":
        box = (float(data.min()), float(data.max()))
    gen = torch.Generator().manual_seed(int(seed))
    ev = _Evaluator(sigma_fn, device, batch_size)
    best = _Best(float(allowance), min_dist, refine)
    notes: list[str] = []
    n = data.shape[0]
    log_data = ev(data)

    # random pairs within the data
    i = torch.randint(0, n, (num_pairs,), generator=gen)
    j = (i + torch.randint(1, n, (num_pairs,), generator=gen)) % n
    best.add("random pairs", data[i], data[j], log_data[i], log_data[j])

    # segments from data points toward training points, consecutive points compared
    a = data[torch.randint(0, n, (num_segments,), generator=gen)]
    b = train[torch.randint(0, train.shape[0], (num_segments,), generator=gen)]
    t = torch.linspace(0.0, 1.0, segment_points + 1).view(1, -1, *[1] * (data.dim() - 1))
    path = a[:, None] + t * (b - a)[:, None]
    log_path = ev(path.reshape(-1, *data.shape[1:])).view(num_segments, -1)
    best.add("segments", path[:, :-1].reshape(-1, *data.shape[1:]), path[:, 1:].reshape(-1, *data.shape[1:]),
             log_path[:, :-1].reshape(-1), log_path[:, 1:].reshape(-1))

    # small random perturbations at several scales
    for h in (0.3 * scale, 0.1 * scale, 0.03 * scale):
        k = torch.randint(0, n, (num_perturbations,), generator=gen)
        v = torch.randn((num_perturbations, *data.shape[1:]), generator=gen)
        v = v / torch.linalg.vector_norm(v.reshape(num_perturbations, -1), dim=1).view(-1, *[1] * (data.dim() - 1))
        y = data[k] + h * v
        best.add("perturbations", data[k], y, log_data[k], ev(y))

    # gradient ascent from the best pairs' ends and random data points
    if ascent_starts > 0 and ascent_steps > 0:
        seeds = [c[1] for c in best.candidates[: ascent_starts // 2]]
        extra = data[torch.randint(0, n, (ascent_starts - len(seeds),), generator=gen)]
        starts = torch.cat([torch.stack(seeds), extra]) if seeds else extra
        _ascent(sigma_fn, ev, best, starts, ascent_steps, 0.2 * scale, 0.05 * scale, box, device, notes)

    # bisection of the best segments (localises jumps)
    for _, x, y, lx, ly in list(best.candidates):
        _bisect(ev, best, x, y, lx, ly)

    value = best.pair.ratio if best.pair is not None else 0.0
    flagged = declared is None or value > float(declared)
    return SigmaAudit(value, best.pair, None if declared is None else float(declared), bool(flagged),
                      dict(best.by_method), ev.count, notes)


def audit_record(result: SigmaAudit, **context: object) -> dict:
    """The audit as JSON-ready numbers (what ``audit-sigma`` prints and records in a run's options);
    ``context`` adds keys such as the seed and the number of points searched."""
    pair = result.pair
    return {
        "audited_r": result.semi_elasticity, "audited_r_is_a_lower_bound": True, "declared_r": result.declared_r,
        "flagged": result.flagged,
        "pair": None if pair is None else {"distance": pair.distance, "sigma_x": pair.sigma_x,
                                           "sigma_y": pair.sigma_y, "method": pair.method},
        "by_method": dict(result.by_method), "evaluations": result.evaluations, "notes": list(result.notes),
        **context,
    }


def audit_warning(run: Mapping) -> str | None:
    """A warning sentence when the audit recorded for a run (``options["sigma_audit"]``) exceeds the r its
    certificates assume, else None.

    The audit is a lower bound on the true semi-elasticity, so exceeding r proves the certificates
    computed for r are not guaranteed. A run without r (naive only) reports Cohen's radius
    sigma(x) Phi^-1(p_A), which assumes a constant sigma (r = 0): any audit above 0 contradicts it.
    """
    audit = (run.get("options") or {}).get("sigma_audit")
    if not isinstance(audit, Mapping):
        return None
    value = audit.get("audited_r")
    r = run.get("r")
    naive_only = r is None or (isinstance(r, float) and math.isnan(r))
    assumed = 0.0 if naive_only else float(r)
    if not isinstance(value, (int, float)) or not value > assumed:
        return None
    if naive_only:
        return (f"the audited semi-elasticity {value:.4g} of its sigma shows sigma(x) changing between nearby "
                "inputs, while its naive radius is Cohen's formula for a constant sigma (r = 0): no guarantee")
    return (f"the audited semi-elasticity {value:.4g} of its sigma exceeds the r = {float(r):g} its sound "
            "certificates assume (a pair of inputs shows it): those certificates are not guaranteed")
