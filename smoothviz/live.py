"""Anytime-valid certification watched while it happens: one point certified live, and the
partial results of a sequential run that is still executing.

A confidence sequence (``smoothviz.sequential``) may be read at any time: its lower bound L on
p_A holds at every checkpoint at once, with probability >= 1 - alpha, so the sound radius of the
current L is a certificate whenever one stops, and the running max of L never decreases. Both
views here only read such bounds; neither needs anything the engine does not already guarantee.

``LivePoint`` / ``start`` / ``advance``: the explorer's "certify live" for one point. Each call of
``advance`` draws at most about ``max_rows`` samples, so a page can draw one small step per rerun
and the user can stop between any two. The samples are the engine's own
(``smoothviz.sequential_engine``): the same selection seeds (the class c_A of fixed-n CERTIFY), the
same estimation seeds and noise blocks numbered by ``sequential.draw_plan``, the same checkpoints
and the same rule, so a point advanced live reaches exactly the decision, the counts and the
bounds a sequential run stores for it. A draw between two checkpoints that is larger than one
step is drawn in runs of whole noise blocks; a block's noise depends only on (seed, point, block),
so the pieces add up to the engine's draw, and the rule reads the counts only once the draw is
complete (at its checkpoint), as in the engine.

``partial_results``: what a running sequential run has certified so far, from its stored points
and the bounds of its points in flight (``Store.in_flight``), as rows for
``analysis.accuracy_curve``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from smoothviz import sequential as sq
from smoothviz.certify import ABSTAIN, STAGE_SELECTION, _check_totals
from smoothviz.errors import InvalidArgument
from smoothviz.noise import NOISE_BLOCK, derive_seed
from smoothviz.sequential_engine import REASON_NAMES, STAGE_SEQUENTIAL
from smoothviz.votes import Classifier, count_votes

Rule = sq.RadiusRule | sq.FixedRadiusRule


@dataclasses.dataclass(frozen=True)
class LivePoint:
    """One point under a sequential rule, advanced step by step (``advance`` returns a new one).

    ``state``: the rule's State of this one point (``sequential.State``, arrays of length 1);
    ``class_a``: c_A from the n0 selection samples (None until they are drawn); ``selection``:
    their votes per class; ``pending_rows`` / ``pending_votes``: rows of the current draw drawn so
    far and their votes for c_A (the rule reads them once the draw reaches its checkpoint);
    ``history``: (estimation samples, lower, upper, sound radius) at each checkpoint read, in
    order; ``stopped``: the user stopped sampling (the bounds then hold at that stopping time).
    """

    rule: Rule
    idx: int
    label: int
    sigma: float
    n0: int
    seed: int
    dim: int | None
    state: sq.State
    class_a: int | None = None
    selection: tuple[int, ...] = ()
    pending_rows: int = 0
    pending_votes: int = 0
    history: tuple[tuple[int, float, float, float], ...] = ()
    stopped: bool = False

    @property
    def t(self) -> int:
        """Estimation samples at the last checkpoint read."""
        return int(self.state.t[0])

    @property
    def k(self) -> int:
        """Votes for c_A among them."""
        return int(self.state.k[0])

    @property
    def samples(self) -> int:
        """Every sample drawn so far: selection, estimation, and the current draw's pieces."""
        return (self.n0 if self.class_a is not None else 0) + self.t + self.pending_rows

    @property
    def lower(self) -> float:
        """The running max of the sequence's lower bound on p_A (0 before the first checkpoint)."""
        return float(self.state.lower[0])

    @property
    def upper(self) -> float:
        """The running min of its upper bound (1 before the first checkpoint)."""
        return float(self.state.upper[0])

    @property
    def radius(self) -> float:
        """The sound radius of ``lower`` (0 while lower <= 1/2): a certificate at this moment."""
        return _sound_radius(self.rule, self.lower, self.sigma, self.dim)

    @property
    def reason(self) -> str:
        """The rule's stopping reason (``sequential_engine.REASON_NAMES``; "undecided" meanwhile)."""
        return REASON_NAMES[int(self.state.reason[0])]

    @property
    def decided(self) -> bool:
        """The rule has stopped the point."""
        return bool(self.state.decided[0])

    @property
    def finished(self) -> bool:
        """Nothing more will be drawn: the rule decided, or the user stopped."""
        return self.decided or self.stopped

    def stop(self) -> LivePoint:
        """The point stopped by the user where it stands (the current bounds keep their guarantee)."""
        return dataclasses.replace(self, stopped=True)

    def resume(self) -> LivePoint:
        """The point sampled on after a stop: the sequence holds at every sample count at once, so
        stopping, looking and going on is one more way of choosing when to stop."""
        return dataclasses.replace(self, stopped=False)


def _sound_radius(rule: Rule, lower: float, sigma: float, dim: int | None) -> float:
    return float(sq.sound_radius(lower, sigma, rule.r, dim if rule.r > 0 else None))


def start(rule: Rule, idx: int, label: int, sigma: float, n0: int, seed: int, dim: int | None = None) -> LivePoint:
    """A point before any sample: ``sigma`` = sigma(x) (as the engine holds it, float32), the
    rule's budget n_max, n0 selection samples, the run's seed; ``dim`` is needed when rule.r > 0.

    A point the rule decides before sampling (a fixed radius beyond what n_max samples could
    certify: SHORT) comes back decided, as the engine stores it, with no sample drawn.
    """
    if not isinstance(n0, (int, np.integer)) or isinstance(n0, bool) or n0 < 1:
        raise InvalidArgument(f"n0 = {n0} must be an integer >= 1")
    if rule.r > 0 and (dim is None or dim < 1):
        raise InvalidArgument(f"dim = {dim} must be an integer >= 1 when r > 0")
    sig = float(np.float32(sigma))
    return LivePoint(rule=rule, idx=int(idx), label=int(label), sigma=sig, n0=int(n0), seed=int(seed),
                     dim=None if dim is None else int(dim), state=rule.start([sig]))


def step_rows(pending: int, draw: int, max_rows: int) -> int:
    """Rows of the next piece of a draw of ``draw`` rows of which ``pending`` are drawn: the rest
    when it fits in ``max_rows``, else the most whole noise blocks that do (at least one block,
    at most the rest: a block is never split, so its noise stays the engine's)."""
    rest = draw - pending
    if rest <= max_rows:
        return rest
    return min(rest, max(1, max_rows // NOISE_BLOCK) * NOISE_BLOCK)


def advance(point: LivePoint, classify: Classifier, x: Tensor, num_classes: int, batch_size: int = 1024,
            max_rows: int = 4 * NOISE_BLOCK) -> LivePoint:
    """One small step of about ``max_rows`` samples: the n0 selection samples first, then the
    estimation draws in order, as many checkpoints as fit (the rule reads the counts at each).

    The first piece of a step is always drawn (the selection samples, or at least one noise block
    of a draw); later pieces only while they fit in ``max_rows``. ``classify`` maps a batch of
    noisy inputs to labels on x's device (``votes.argmax_classifier`` of the model); ``x`` is the
    point's input (its shape, no batch dimension). A finished point comes back as it is. The
    counts are the engine's for (seed, idx) whatever ``max_rows`` and ``batch_size`` are.
    """
    if max_rows < 1:
        raise InvalidArgument(f"max_rows = {max_rows} must be >= 1")
    left = int(max_rows)
    while not point.finished:
        point, drawn = _piece(point, classify, x, num_classes, batch_size, left, first=left == max_rows)
        left -= drawn
        if drawn == 0 or left <= 0:
            break
    return point


def _piece(point: LivePoint, classify: Classifier, x: Tensor, num_classes: int, batch_size: int, left: int,
           first: bool) -> tuple[LivePoint, int]:
    """The next piece of the point's sampling and the rows it drew (0: it does not fit in
    ``left`` and is not the step's ``first``)."""
    generator = torch.Generator(device=x.device)
    xs = x.unsqueeze(0).to(torch.float32)
    sig = torch.tensor([point.sigma], dtype=torch.float32, device=x.device)

    def votes(num: int, seed: int, first_block: int) -> np.ndarray:
        with torch.inference_mode():
            counts = count_votes(classify, xs, sig, [num], num_classes, batch_size, generator, [seed],
                                 first_blocks=[first_block]).cpu().numpy()
        _check_totals(counts, [num])
        return counts[0]

    if point.class_a is None:
        if point.n0 > left and not first:
            return point, 0
        selection = votes(point.n0, derive_seed(point.seed, point.idx, STAGE_SELECTION), 0)
        return dataclasses.replace(point, class_a=int(selection.argmax()),  # first maximum on ties, as CERTIFY
                                   selection=tuple(int(v) for v in selection)), point.n0
    rows, first_blocks = point.rule.next_draw(point.state)
    draw = int(rows[0])
    take = step_rows(point.pending_rows, draw, left)
    if take > left and not first:
        return point, 0
    counts = votes(take, derive_seed(point.seed, point.idx, STAGE_SEQUENTIAL),
                   int(first_blocks[0]) + point.pending_rows // NOISE_BLOCK)
    pending_rows, pending_votes = point.pending_rows + take, point.pending_votes + int(counts[point.class_a])
    if pending_rows < draw:
        return dataclasses.replace(point, pending_rows=pending_rows, pending_votes=pending_votes), take
    state = point.rule.update(point.state, [point.k + pending_votes], [point.t + draw])
    lower = float(state.lower[0])
    entry = (int(state.t[0]), lower, float(state.upper[0]), _sound_radius(point.rule, lower, point.sigma, point.dim))
    return dataclasses.replace(point, state=state, pending_rows=0, pending_votes=0,
                               history=(*point.history, entry)), take


def history_arrays(point: LivePoint) -> dict[str, np.ndarray]:
    """The checkpoints read so far as arrays ``samples``, ``lower``, ``upper``, ``radius``."""
    cols = list(zip(*point.history)) if point.history else [(), (), (), ()]
    return {"samples": np.asarray(cols[0], dtype=np.int64), "lower": np.asarray(cols[1], dtype=float),
            "upper": np.asarray(cols[2], dtype=float), "radius": np.asarray(cols[3], dtype=float)}


def needed_p(point: LivePoint) -> float | None:
    """The p_A that the fixed-radius rule's R needs (None in radius mode)."""
    if isinstance(point.rule, sq.FixedRadiusRule):
        return float(point.state.target[0])
    return None


def _certified_text(point: LivePoint, name: str) -> str:
    return f"g(x′) = {name} for every x′ with ‖x′ − x‖ ≤ {point.radius:.4g}"


def _goal(point: LivePoint) -> str:
    """What the rule is after: radius R (fixed-radius mode) or a lower bound above 1/2."""
    if isinstance(point.rule, sq.FixedRadiusRule):
        return f"radius R = {point.rule.radius:g}"
    return "a lower bound above 1/2"


def verdict(point: LivePoint, class_names: Sequence[str]) -> str:
    """The sentence the guarantee allows about the point at this moment (one paragraph).

    Every statement read from the bounds carries its guarantee: with probability at least
    1 - alpha, at every sample count simultaneously (so now too, and at whatever time one
    stops). A fixed-radius question is answered "certified at R" or "cannot reach R" once
    decided; until then, and in radius mode, the current lower bound's radius is what may be
    claimed if one stops now.
    """
    alpha = point.rule.alpha
    level = f"With probability ≥ 1 − α (α = {alpha:g}), at every sample count simultaneously"
    if point.class_a is None:
        if point.decided:
            return (f"Cannot reach {_goal(point)}: not even n_max = {point.rule.n_max:,} estimation samples all "
                    f"voting for one class would lift the lower bound there at α = {alpha:g}; nothing was sampled.")
        return f"Drawing the n0 = {point.n0:,} selection samples that pick the class A to certify…"
    name = _name(class_names, point.class_a)
    lower, upper, p_r = point.lower, point.upper, needed_p(point)
    reason = point.reason
    bound = f"{level}, p_A ≥ {lower:.6g} for class A = {name}"
    now = f"so {_certified_text(point, name)}" if lower > 0.5 else "that is not above 1/2, so nothing is certified"
    if reason == "certified":
        return (f"Certified at R = {point.rule.radius:g}. {bound}, at least the {p_r:.6g} that R needs: "
                f"{_certified_text(point, name)} (the radius of this bound). Sampling stopped.")
    if reason == "below-target":
        return (f"Cannot reach R = {point.rule.radius:g}. {level}, p_A ≤ {upper:.6g} for class A = {name}, below "
                f"the {p_r:.6g} that R needs: no number of samples would certify R here."
                + (f" The lower bound p_A ≥ {lower:.6g} still certifies {_certified_text(point, name)}."
                   if lower > 0.5 else ""))
    if reason == "abstain":
        return (f"Abstain. {level}, p_A ≤ {upper:.6g} ≤ 1/2 for class A = {name}: no number of samples would "
                "certify it here. Sampling stopped.")
    if reason == "short":
        return (f"Cannot reach {_goal(point)} within the budget: not even all of the remaining samples voting for "
                f"{name} would lift the lower bound there by n_max = {point.rule.n_max:,}. {bound}; {now}.")
    if reason == "radius-cap":
        return f"{bound}; {now}, at least the maximum radius asked for. Sampling stopped."
    if reason == "stalled":
        return (f"{bound}; {now}. The radius grew by less than the tolerance over the last doubling of the "
                "samples: sampling stopped.")
    if reason == "budget":
        return f"The budget of n_max = {point.rule.n_max:,} estimation samples is spent. {bound}; {now}."
    if point.stopped:
        return (f"Stopped by you after {point.samples:,} samples; the guarantee holds at this stopping time. "
                f"{bound}; {now}.")
    if lower > 0.5:
        return f"{bound}; {now} — you may stop now or continue."
    return f"{bound}; {now} yet: continue, or stop and abstain."


def _name(class_names: Sequence[str], c: int) -> str:
    return str(class_names[c]) if 0 <= c < len(class_names) else str(c)


# ---------------------------------------------------------------------- a running run's partial results
PARTIAL_COLUMNS = ["idx", "label", "predict", "correct", "radius", "samples", "state"]


def partial_results(indices: Sequence[int], results: pd.DataFrame, in_flight: pd.DataFrame, n0: int,
                    r: float | None, dim: int | None) -> pd.DataFrame:
    """Every point of a running sequential run as it stands: certified so far.

    ``results``: the run's stored points (``Store.results``); ``in_flight``: the bounds of the
    points being sampled (``Store.in_flight``: idx, samples, lower, sigma, class_a, label). A
    stored point keeps its final result ("decided"); a point in flight counts as predicting c_A
    with the sound radius of its current lower bound when that bound exceeds 1/2 (a certificate
    at this moment: the bound holds at every checkpoint at once), else as abstaining ("in
    flight"); the rest have drawn nothing ("waiting", abstaining). ``samples``: every sample
    behind the row (selection + estimation; n0 + the estimation samples so far in flight).
    ``r`` None: a sigma without semi-elasticity, no radius beyond 0. Columns PARTIAL_COLUMNS,
    one row per index in order.
    """
    order = [int(i) for i in indices]
    rows: dict[int, dict] = {i: {"idx": i, "label": -1, "predict": ABSTAIN, "correct": False, "radius": 0.0,
                                 "samples": 0, "state": "waiting"} for i in order}
    if len(in_flight):
        live = in_flight[in_flight["idx"].isin(rows) & ~in_flight["idx"].isin(results["idx"])]
        lower = live["lower"].to_numpy(dtype=float)
        sigma = live["sigma"].to_numpy(dtype=float)
        certified = lower > 0.5
        radius = np.zeros(lower.size)
        if certified.any() and r is not None:
            radius[certified] = np.asarray(sq.sound_radius(lower[certified], sigma[certified], float(r),
                                                           dim if r > 0 else None), dtype=float)
        for j, row in enumerate(live.itertuples(index=False)):
            predict = int(row.class_a) if certified[j] else ABSTAIN
            rows[int(row.idx)] = {"idx": int(row.idx), "label": int(row.label), "predict": predict,
                                  "correct": predict == int(row.label), "radius": float(radius[j]),
                                  "samples": int(n0) + int(row.samples), "state": "in flight"}
    used = _used(results, n0)
    for j, row in enumerate(results.itertuples(index=False)):
        if int(row.idx) in rows:
            rows[int(row.idx)] = {"idx": int(row.idx), "label": int(row.label), "predict": int(row.predict),
                                  "correct": bool(row.correct), "radius": float(row.radius),
                                  "samples": int(used[j]), "state": "decided"}
    return pd.DataFrame([rows[i] for i in order], columns=PARTIAL_COLUMNS)


def _used(results: pd.DataFrame, n0: int) -> list[int]:
    """Samples behind each stored row: selection + estimation as recorded, else n0 + sum(counts)."""
    if "samples" in results and "selection" in results:
        return [int(s) + int(e) if not (pd.isna(s) or pd.isna(e)) else 0
                for s, e in zip(results["selection"], results["samples"])]
    return [int(n0) + sum(c or []) for c in results["counts"]]


@dataclasses.dataclass(frozen=True)
class SampleCost:
    """Samples behind a sequential run's results so far against a fixed-n run of the same points."""

    used: int  # stored points' samples plus those of the points in flight
    decided: int  # points stored
    in_flight: int  # points being sampled
    fixed: int  # points x (n0 + n): what fixed-n CERTIFY with n = the budget draws
    points: int
    per_point_fixed: int

    def text(self) -> str:
        """One line: samples so far versus the fixed-n run's cost."""
        share = f" ({self.used / self.fixed:.1%} of it)" if self.fixed else ""
        return (f"samples used so far {self.used:,} (for {self.decided:,} decided and {self.in_flight:,} in-flight "
                f"points) vs a fixed-n run's {self.points:,} points × {self.per_point_fixed:,} = {self.fixed:,}{share}")


def sample_cost(partial: pd.DataFrame, n0: int, n: int) -> SampleCost:
    """The SampleCost of ``partial_results`` for a run with n0 selection samples and budget n."""
    per_point = int(n0) + int(n)
    states = partial["state"]
    return SampleCost(used=int(partial["samples"].sum()), decided=int((states == "decided").sum()),
                      in_flight=int((states == "in flight").sum()), fixed=len(partial) * per_point,
                      points=len(partial), per_point_fixed=per_point)

