"""Anytime-valid CERTIFY on the device: many undecided points share each forward batch.

CERTIFY (Cohen et al. 2019) draws a fixed n estimation samples per point. Here each point draws
them in rounds and a stopping rule of ``smoothviz.sequential`` (``RadiusRule`` or
``FixedRadiusRule``, on a confidence sequence for p_A) reads its counts at fixed checkpoints and
stops it as soon as its certificate is settled; the certificate holds at that data-dependent
stopping time because the sequence's bound holds at every checkpoint at once (Ville's inequality
for the mixture sequence; a union bound over the checkpoints for Clopper-Pearson).

The round loop (``iter_certify_sequential``):

1. A pool of points is in flight. Before each round, waiting points join it while the rows the
   round would draw are below ``round_rows`` (about eight batches per sampling thread), so every
   round fills its batches: a decided point leaves and a waiting one takes its place.
2. One call of ``votes.count_votes`` draws, in one stream cut into full batches: the n0
   selection samples of the points that just joined (seeds ``derive_seed(seed, idx,
   STAGE_SELECTION)``, the seeds of fixed-n CERTIFY, so c_A is the fixed run's) and the next
   draw of every point in the pool (``rule.next_draw``: its rows up to the next checkpoint, as
   the noise blocks numbered from ``first_block``, seeds ``derive_seed(seed, idx,
   STAGE_SEQUENTIAL)``). Votes are counted on the device; one host copy per round.
3. c_A of a new point is the top class of its selection votes (first on ties, as in CERTIFY);
   its estimation votes for c_A are added to k and the rows drawn to t; ``rule.update`` reads
   (k, t) of every point in the pool. The estimation samples are independent of the selection
   samples, so given c_A they are i.i.d. Bernoulli(p_A), the setting of the sequence's
   guarantee, although they were drawn in the same round as the selection samples.
4. Decided points are yielded (and stored by the caller) at once; the others stay in the pool.

Why a resumed run reproduces a clean one: a point's noise is a function of (seed, idx, stage,
block) only, the checkpoints are fixed before any data are seen, and the rule is a function of
the counts at them, so a point's whole path (c_A, the draws, the counts, the stopping time, the
certificate) depends neither on which points share its batches nor on the batch size, the
round size or the number of sampling threads.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from smoothviz import bounds
from smoothviz import sequential as sq
from smoothviz.certify import (
    ABSTAIN,
    STAGE_SELECTION,
    CancelFn,
    PointResult,
    ProgressFn,
    _check_totals,
    _prepare,
    point_labels,
)
from smoothviz.errors import Cancelled, InvalidArgument
from smoothviz.noise import NOISE_BLOCK, derive_seed
from smoothviz.votes import Classifier, check_sigma, count_votes, sampling_threads

# Seed stage of the sequential estimation samples: a stage of its own (certify uses 0-2), so its
# noise is independent of a fixed-n run's estimation noise on the same seed.
STAGE_SEQUENTIAL = 3
MODES = ("radius", "fixed-radius")
# Names of the confidence sequences: sequential.METHODS, plus "betting" for the mixture (a mixture
# of likelihood ratios is the capital of a mixture of constant bets: sequential.py's docstring).
CS_ALIASES = {"mixture": "mixture", "betting": "mixture", "union": "union-cp", "union-cp": "union-cp"}
# Checkpoint schedule per sequence (first, growth): the mixture may be read as often as one likes
# (sequential.checkpoint_schedule); the union bound pays for every checkpoint, so it looks less often.
DEFAULT_SCHEDULE = {"mixture": (16, 1.25), "union-cp": (16, 2.0)}
REASON_NAMES = {int(r): r.name.lower().replace("_", "-") for r in sq.Reason}


@dataclasses.dataclass(frozen=True)
class SequentialSettings:
    """The stopping rule of a sequential run, as the store records it (``to_dict``).

    ``mode``: "radius" (sample until the radius is as good as it will get: ``RadiusRule`` with
    ``max_radius`` and ``tolerance``) or "fixed-radius" (decide "certified at ``radius``?":
    ``FixedRadiusRule``). ``method``: the confidence sequence, "mixture" or "union-cp"
    (``sequential.METHODS``). ``first``, ``growth``: the checkpoints; ``prior``: the mixture's
    (a, b, mass at one). The budget n_max is the run's n; alpha, r and the dimension are the
    run's too (``rule``).
    """

    mode: str
    method: str = "mixture"
    radius: float | None = None
    max_radius: float | None = None
    tolerance: float = 0.0
    first: int = 16
    growth: float = 1.25
    prior: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidArgument(f"sequential mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.method not in sq.METHODS:
            raise InvalidArgument(f"confidence sequence {self.method!r} is not one of {', '.join(sq.METHODS)}")
        if self.mode == "fixed-radius":
            if self.radius is None or self.max_radius is not None or self.tolerance:
                raise InvalidArgument("fixed-radius mode takes a radius, and neither max_radius nor tolerance")
        elif self.radius is not None:
            raise InvalidArgument("radius mode takes max_radius and tolerance, not a radius")
        self.rule(alpha=0.5, n_max=1)  # the rule checks the numbers (any budget does for that)

    @classmethod
    def create(cls, mode: str, cs: str = "mixture", radius: float | None = None,
               max_radius: float | None = None, tolerance: float = 0.0) -> SequentialSettings:
        """Settings with the sequence named as the CLI names it (CS_ALIASES) and its schedule."""
        if cs not in CS_ALIASES:
            raise InvalidArgument(f"confidence sequence {cs!r} is not one of {', '.join(CS_ALIASES)}")
        method = CS_ALIASES[cs]
        first, growth = DEFAULT_SCHEDULE[method]
        return cls(mode=mode, method=method, radius=radius, max_radius=max_radius, tolerance=float(tolerance),
                   first=first, growth=growth)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (what ``store.create_run(sequential=...)`` records)."""
        d = dataclasses.asdict(self)
        d["prior"] = list(self.prior)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SequentialSettings:
        """Settings from ``to_dict``'s form; InvalidArgument for unknown keys or values."""
        if not isinstance(data, Mapping):
            raise InvalidArgument(f"sequential settings must be a mapping, not {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown or "mode" not in data:
            raise InvalidArgument(f"sequential settings: unknown keys {unknown}" if unknown
                                  else "sequential settings: no mode")
        values = dict(data)
        if "prior" in values:
            prior = values["prior"]
            if not isinstance(prior, (list, tuple)) or len(prior) != 3:
                raise InvalidArgument(f"sequential settings: prior {prior!r} is not (a, b, mass_at_one)")
            values["prior"] = tuple(float(v) for v in prior)
        return cls(**values)

    def rule(self, alpha: float, n_max: int, r: float = 0.0, dim: int | None = None
             ) -> sq.RadiusRule | sq.FixedRadiusRule:
        """The stopping rule for a run with level ``alpha``, budget ``n_max``, sigma's r and dim."""
        common = dict(alpha=alpha, n_max=n_max, method=self.method, first=self.first, growth=self.growth,
                      prior=self.prior, r=r, dim=dim)
        if self.mode == "fixed-radius":
            return sq.FixedRadiusRule(radius=self.radius, **common)
        cap = math.inf if self.max_radius is None else self.max_radius
        return sq.RadiusRule(max_radius=cap, tolerance=self.tolerance, **common)

    def describe(self) -> str:
        """A short text such as ``fixed-radius R=0.25 mixture`` (run names, summaries)."""
        if self.mode == "fixed-radius":
            what = f"fixed-radius R={self.radius:g}"
        else:
            what = "radius" + ("" if self.max_radius is None else f" max-radius={self.max_radius:g}") \
                + (f" tolerance={self.tolerance:g}" if self.tolerance else "")
        return f"{what} {self.method}"


def rule_for_run(run: Mapping[str, Any], r: float, dim: int) -> sq.RadiusRule | sq.FixedRadiusRule | None:
    """The stopping rule a stored run describes (its ``sequential`` settings, alpha and n as
    the budget), None for a fixed-n run; InvalidArgument when the settings do not make a rule."""
    settings = run.get("sequential")
    if settings is None:
        return None
    if run.get("n") is None or run.get("alpha") is None:
        raise InvalidArgument("a sequential run needs n (the budget) and alpha")
    return SequentialSettings.from_dict(settings).rule(float(run["alpha"]), int(run["n"]), r, dim)


@dataclasses.dataclass
class SequentialResult(PointResult):
    """A point's outcome under a sequential rule: PointResult plus how it stopped.

    ``samples``: estimation samples the rule read (t at its stop; ``counts`` sums to it);
    ``selection``: selection samples (n0; 0 for a point decided before any sample); ``class_a``:
    c_A (also when abstaining; None without samples); ``votes_a``: votes for c_A among the
    ``samples``; ``p_a_upper``: the sequence's upper bound; ``stop_reason``: the rule's reason
    (REASON_NAMES); ``checkpoints``: how many checkpoints the rule read.
    """

    samples: int = 0
    selection: int = 0
    class_a: int | None = None
    votes_a: int = 0
    p_a_upper: float = 1.0
    stop_reason: str = "undecided"
    checkpoints: int = 0


def default_round_rows(batch_size: int, workers: int) -> int:
    """Rows one round aims at: eight batches, and at least eight noise blocks per sampling thread,
    so a round's last, partial batch (one per thread's work unit) is a small share of it."""
    return max(8 * int(batch_size), 8 * NOISE_BLOCK * max(1, int(workers)))


def _take(state: sq.State, rows: np.ndarray) -> sq.State:
    """The State of the points ``rows`` (every per-point array indexed alike)."""
    return sq.State(**{f.name: getattr(state, f.name)[rows] for f in dataclasses.fields(sq.State)})


def _concat(a: sq.State, b: sq.State) -> sq.State:
    """The State of a's points followed by b's."""
    return sq.State(**{f.name: np.concatenate([getattr(a, f.name), getattr(b, f.name)])
                       for f in dataclasses.fields(sq.State)})


class _Tracker:
    """Progress of a sequential run in the engine's dict format (``certify._Progress``'s keys).

    ``done``: points decided; ``fraction``: decided points plus, for each point in flight, its
    estimation samples over the budget (never decreases); ``rate`` and ``eta``: decided points
    per second and the time left at that rate; ``samples``: every sample drawn so far
    (selection and estimation); ``in_flight``: points in the pool; ``pool``: their partial
    state after the last round, as lists (``idx``, ``samples``: estimation samples so far,
    ``lower`` and ``upper``: the bounds on p_A so far, valid at this moment like any reading of
    the sequence, ``sigma``: sigma(x), ``class_a``: c_A, ``label``), for a page that draws what
    is certified so far while points are being decided (``store.Store.set_in_flight``).
    """

    def __init__(self, total: int, n_max: int, progress: ProgressFn | None, cancel: CancelFn | None) -> None:
        self.total, self.n_max = total, n_max
        self.progress, self.cancel = progress, cancel
        self.done = 0
        self.samples = 0
        self.partial = 0.0
        self.pool: dict[str, list] = {key: [] for key in ("idx", "samples", "lower", "upper", "sigma", "class_a",
                                                          "label")}
        self.t0 = time.perf_counter()

    def on_batch(self, rows: int) -> None:
        self.samples += rows
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled")
        self.report()

    def round_done(self, decided: int, idx: Sequence[int], state: sq.State, class_a: Sequence[int],
                   labels: Sequence[int]) -> None:
        self.done += decided
        self.partial = float(np.sum(state.t)) / self.n_max
        self.pool = {"idx": list(idx), "samples": state.t.tolist(), "lower": state.lower.tolist(),
                     "upper": state.upper.tolist(), "sigma": state.sigma.tolist(),
                     "class_a": [int(a) for a in class_a], "label": [int(y) for y in labels]}
        self.report()

    def report(self) -> None:
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self.t0
        rate = self.done / elapsed if elapsed > 0 and self.done else None
        eta = (self.total - self.done) / rate if rate else None
        fraction = min(1.0, (self.done + self.partial) / self.total) if self.total else 1.0
        self.progress({"done": self.done, "total": self.total, "rate": rate, "eta": eta, "fraction": fraction,
                       "samples": self.samples, "elapsed": elapsed, "in_flight": len(self.pool["idx"]),
                       "pool": self.pool})


def _radii(rule: sq.RadiusRule | sq.FixedRadiusRule, state: sq.State) -> tuple[np.ndarray, np.ndarray]:
    """(sound radius, naive radius) of decided points from their lower bounds.

    The rule fills in the radius of the points it needs it for; the rest get the sound radius of
    their lower bound too (fixed-radius mode: a point below the target may still be certified at
    a smaller radius; the bound holds at the stopping time, so any radius computed from it is a
    certificate). A point the fixed-radius rule certified gets at least the rule's R: its bound
    reached certify_threshold(R), whose radius is R up to the rounding of Phi^-1(Phi(R / sigma)).
    """
    lower, sigma = state.lower, state.sigma
    radius = state.radius.copy()
    missing = (radius == 0) & (lower > 0.5)
    if missing.any():
        radius[missing] = np.asarray(sq.sound_radius(lower[missing], sigma[missing], rule.r, rule.dim), dtype=float)
    if isinstance(rule, sq.FixedRadiusRule):
        hit = state.reason == sq.Reason.CERTIFIED
        radius[hit] = np.maximum(radius[hit], rule.radius)
    naive = np.zeros(lower.size)
    above = lower > 0.5
    if above.any():
        naive[above] = np.asarray(bounds.naive_radius(lower[above], sigma[above]), dtype=float)
    return radius, naive


def iter_certify_sequential(
    model: nn.Module | Classifier,
    x: Tensor,
    labels: Sequence[int] | Tensor,
    idx: Sequence[int],
    sigmas: Tensor,
    n0: int,
    rule: sq.RadiusRule | sq.FixedRadiusRule,
    num_classes: int,
    batch_size: int,
    device: torch.device | str,
    seed: int,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    round_rows: int | None = None,
    threads: int | None = None,
) -> Iterator[SequentialResult]:
    """Sequential CERTIFY of every point, yielding each SequentialResult as soon as it is decided.

    ``sigmas``: sigma(x) of each point (checked by ``prepare_run``); ``rule``: the stopping
    rule, whose n_max is the budget of estimation samples and whose r and dim give the sound
    radius. ``round_rows``: rows a round aims at (default ``default_round_rows``; it changes
    neither the counts nor the results, only how they are batched); ``threads``: sampling
    threads on a CPU (``votes.sampling_threads``). Raises Cancelled when ``cancel()`` turns
    true (checked after every batch); points already yielded stay valid, the points in flight
    start again on a resume and reach the same results.
    """
    if not 1 <= n0:
        raise InvalidArgument(f"n0 must be >= 1, got {n0}")
    if batch_size < 1:
        raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    labels, idx = point_labels(x, labels, idx)
    check_sigma(sigmas.reshape(-1), len(idx))
    classify, new_input = _prepare(model, device)
    generator = torch.Generator(device=device)
    xs = x.to(device=device, dtype=torch.float32)
    sig = sigmas.reshape(-1).to(device=device, dtype=torch.float32)
    sig_host = sig.cpu().numpy().astype(np.float64)
    workers = sampling_threads(classify, device, seeded=True, threads=threads)
    target = int(round_rows) if round_rows is not None else default_round_rows(batch_size, workers)
    if target < 1:
        raise InvalidArgument(f"round_rows must be >= 1, got {round_rows}")
    selection_seeds = [derive_seed(seed, i, STAGE_SELECTION) for i in idx]
    estimation_seeds = [derive_seed(seed, i, STAGE_SEQUENTIAL) for i in idx]
    tracker = _Tracker(len(idx), rule.n_max, progress, cancel)
    tracker.report()

    initial = rule.start(sig_host)
    class_a = np.full(len(idx), -1, dtype=np.int64)
    seconds = np.zeros(len(idx))

    def results(state: sq.State, positions: np.ndarray, counts: np.ndarray) -> Iterator[SequentialResult]:
        radius, naive = _radii(rule, state)
        for j, p in enumerate(positions):
            sampled = class_a[p] >= 0
            certified = sampled and state.lower[j] > 0.5
            predict = int(class_a[p]) if certified else ABSTAIN
            yield SequentialResult(
                idx=idx[p], label=labels[p], predict=predict, correct=predict == labels[p],
                p_a_lower=float(state.lower[j]), sigma=float(sig_host[p]),
                radius=float(radius[j]) if certified else 0.0, naive_radius=float(naive[j]) if certified else 0.0,
                counts=[int(c) for c in counts[j]], seconds=float(seconds[p]),
                samples=int(state.t[j]), selection=n0 if sampled else 0,
                class_a=int(class_a[p]) if sampled else None, votes_a=int(state.k[j]),
                p_a_upper=float(state.upper[j]), stop_reason=REASON_NAMES[int(state.reason[j])],
                checkpoints=int(state.checkpoint[j]),
            )

    at_start = np.flatnonzero(initial.decided)
    if at_start.size:
        yield from results(_take(initial, at_start), at_start, np.zeros((at_start.size, num_classes), np.int64))
        tracker.round_done(int(at_start.size), [], _take(initial, np.zeros(0, dtype=np.int64)), [], [])
    waiting = collections.deque(int(p) for p in np.flatnonzero(~initial.decided))
    active = np.zeros(0, dtype=np.int64)
    state = _take(initial, active)
    counts = np.zeros((0, num_classes), dtype=np.int64)
    first_rows = int(rule.schedule[0])
    while active.size or waiting:
        t0 = time.perf_counter()
        planned = int(rule.next_samples(state).sum())
        joined: list[int] = []
        while waiting and planned < target:
            joined.append(waiting.popleft())
            planned += n0 + first_rows
        if joined:
            new = np.asarray(joined, dtype=np.int64)
            active = np.concatenate([active, new])
            state = _concat(state, _take(initial, new))
            counts = np.concatenate([counts, np.zeros((new.size, num_classes), np.int64)])
        rows, first = rule.next_draw(state)
        # virtual points: the selection samplings of the points that joined, then every point's draw
        members = np.concatenate([np.asarray(joined, dtype=np.int64), active])
        nums = [n0] * len(joined) + [int(v) for v in rows]
        member_index = torch.as_tensor(members, device=device)
        with torch.inference_mode():
            votes = count_votes(
                classify, xs.index_select(0, member_index), sig.index_select(0, member_index), nums, num_classes,
                batch_size, generator,
                [selection_seeds[p] for p in joined] + [estimation_seeds[p] for p in active],
                on_batch=tracker.on_batch, new_input=new_input, threads=threads,
                first_blocks=[0] * len(joined) + [int(v) for v in first],
            ).cpu().numpy()
        _check_totals(votes, nums)
        if joined:
            class_a[joined] = votes[:len(joined)].argmax(axis=1)  # first maximum on ties, as CERTIFY
        counts += votes[len(joined):]
        k = counts[np.arange(active.size), class_a[active]]
        state = rule.update(state, k, state.t + rows)
        share = (time.perf_counter() - t0) / max(1, sum(nums))
        np.add.at(seconds, members, share * np.asarray(nums, dtype=float))
        decided = state.decided
        if decided.any():
            out = np.flatnonzero(decided)
            yield from results(_take(state, out), active[out], counts[out])
            keep = np.flatnonzero(~decided)
            active, state, counts = active[keep], _take(state, keep), counts[keep]
        tracker.round_done(int(decided.sum()), [idx[p] for p in active], state, class_a[active],
                           [labels[p] for p in active])

