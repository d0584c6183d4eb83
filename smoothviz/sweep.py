"""Sweeps: a grid of certifications on the same test points, recorded and executed as one job.

A sweep crosses models, sigma functions, sample counts n and failure probabilities alpha; every
cell is an ordinary certify run (``smoothviz.certify``) on the same points with the same seed, so
two cells differ only in what the grid varies, and their per-point results pair up
(``smoothviz.tradeoffs.paired_difference``).

Grid syntax (``expand_sigma_grid``): a sigma spec in which any value may be a list in braces,
``knn:{0.12,0.25},{0,0.05,0.1},20`` (2 x 3 kNN functions) or ``constant:{0.12,0.25}``; the lists
expand to their product, the first varying slowest. n and alpha are comma-separated lists.

The store keeps one ``sweeps`` row (identity, configuration, status, process, cancel flag) and
one ``sweep_runs`` row per cell with its child run, all created in one transaction
(``Store.create_sweep``). The identity is what the user asked for (grid as given, models and
their SHA-256, points, seed, n0, device type, options, sequential rule, name), so rerunning the
same command finds the sweep and executes only the cells whose runs are not done, and inside each
run only the missing points (a point's counts depend on (seed, point) alone: a resumed sweep
equals a clean one). A deleted child run is created again.

kNN distances are shared: the offset m (the training points' mean kNN distance, N^2 distances)
is computed once per (data, k, reference) when the sweep is recorded and written into each child's
spec (``knn:SIGMA_B,R,K,m=M``), so no child, resume or torchrun rank computes it again; when the
sweep executes, the chosen points' kNN distances are computed once per (data, k, reference) and
every cell's sigma(x) is read from them (``sigma.KNN.remember_distances`` /
``with_parameters``), exactly the values a separately built sigma function gives.

Cancel (``Store.request_sweep_cancel``) stops the current run after its batch in flight and
starts no other. With ``processes`` > 1 each child runs under torchrun (``smoothviz.launch``),
its ranks preparing the run themselves (m comes from the spec; the points' distances are cheap).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smoothviz import cost
from smoothviz.errors import Cancelled, InvalidArgument, SmoothvizError, StoreError
from smoothviz.store import RUN_NAME_MAX, Store, check_run_name

GRID_MAX = 64  # cells a sweep may have without allow_long
GRID_LIMIT = 4096  # cells no sweep may exceed
GRID_TEXT_MAX = 1000  # characters of one grid spec
CANCEL_POLL_SECONDS = 0.5  # how often the executing sweep reads its cancel flag

ProgressFn = Callable[[dict], None]
_BRACES = re.compile(r"\{([^{}]*)\}")


# ---------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------


def _short(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text):,} characters)"


def expand_sigma_grid(text: str) -> list[str]:
    """The canonical sigma specs a grid spec stands for, in grid order.

    Every ``{a,b,...}`` is a list of values; the spec expands to the product of its lists, the
    first list varying slowest. Each spec is checked as ``sigma.parse_sigma_spec`` checks it.
    Refused in one line: braces that do not pair, an empty list or item, a spec that is not a
    constant or kNN sigma (ddrs has no semi-elasticity to sweep), more than GRID_LIMIT specs, and a
    spec given twice (after canonical rounding, e.g. ``{0.25,0.250}``).
    """
    from smoothviz.sigma import canonical_spec, parse_sigma_spec

    if not isinstance(text, str) or not text.strip():
        raise InvalidArgument("--sigma-grid: empty; expected a sigma spec such as knn:{0.12,0.25},{0,0.05},20")
    if len(text) > GRID_TEXT_MAX:
        raise InvalidArgument(f"--sigma-grid {_short(text)}: longer than {GRID_TEXT_MAX} characters")
    parts = _BRACES.split(text.strip())
    literals, lists = parts[0::2], parts[1::2]
    if any("{" in lit or "}" in lit for lit in literals):
        raise InvalidArgument(f"--sigma-grid {_short(text)}: braces do not pair (no nesting: one list per value)")
    values: list[list[str]] = []
    for body in lists:
        items = [item.strip() for item in body.split(",")]
        if not body.strip() or any(not item for item in items):
            raise InvalidArgument(f"--sigma-grid {_short(text)}: the list {{{_short(body, 30)[1:-1]}}} has an empty "
                                  "item")
        values.append(items)
    size = math.prod(len(v) for v in values)
    if size > GRID_LIMIT:
        raise InvalidArgument(f"--sigma-grid {_short(text)}: {size:,} sigma functions, more than {GRID_LIMIT:,}")
    specs: list[str] = []
    for choice in itertools.product(*values):
        spec = literals[0] + "".join(c + lit for c, lit in zip(choice, literals[1:]))
        params = parse_sigma_spec(spec)
        if params["kind"] not in ("constant", "knn"):
            raise InvalidArgument(f"--sigma-grid {_short(text)}: {params['kind']} has no semi-elasticity to sweep; "
                                  "a sweep takes constant and knn sigma functions")
        canonical = canonical_spec(params)
        if canonical in specs:
            raise InvalidArgument(f"--sigma-grid {_short(text)}: {canonical} appears twice")
        specs.append(canonical)
    return specs


def parse_values(text: str, flag: str, convert: Callable[[str], Any]) -> list:
    """A comma-separated list of values for ``flag`` (``convert`` raises ArgumentTypeError or
    ValueError on a bad item); refused in one line when empty or with a repeated value."""
    items = [t.strip() for t in str(text).split(",")]
    if not items or any(not t for t in items):
        raise InvalidArgument(f"{flag} {_short(str(text))}: expected comma-separated values without empty items")
    out = []
    for item in items:
        try:
            value = convert(item)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise InvalidArgument(f"{flag}: {_short(item, 30)}: {exc}") from None
        if value in out:
            raise InvalidArgument(f"{flag} {_short(str(text))}: {value!r} appears twice")
        out.append(value)
    return out


@dataclass(frozen=True)
class ModelChoice:
    """One model of the grid: the file a run records, a short label, and the run options that
    describe it (a foreign model's ``{"model": record}``, else empty)."""

    checkpoint: str
    label: str
    description: dict = field(default_factory=dict)
    trust_code: bool = False


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: a model (index into the plan's models), a sigma spec as given, n, alpha."""

    model: int
    sigma: str
    n: int
    alpha: float


def sigma_parameters(spec: str) -> dict:
    """What a cell records of its sigma: kind, sigma_b, r, k (kNN) or sigma (constant), and m when given."""
    from smoothviz.sigma import parse_sigma_spec

    p = parse_sigma_spec(spec)
    if p["kind"] == "constant":
        return {"kind": "constant", "sigma": p["sigma"], "r": 0.0}
    return {"kind": "knn", "sigma_b": p["sigma_b"], "r": p["r"], "k": p["k"], "m": p["m"],
            "sigma_min": p["sigma_min"], "sigma_max": p["sigma_max"]}


def on_axes(items: Sequence[tuple[Mapping[str, Any], Any]]) -> list[tuple[dict, Any]]:
    """The cells of ``items`` = (cell parameters, results) placed on the (sigma_b, r) plane of the
    trade-off views: kNN cells as they are, a constant sigma at (sigma, 0) unless a kNN cell of
    the same model, n and alpha with r = 0 has that sigma_b (the same sigma function, so the same
    results). Parameters gain ``sigma_b`` and ``r``; the order is kept."""
    def key(p: Mapping[str, Any], sigma_b: float) -> tuple:
        return p.get("model"), p.get("n"), p.get("alpha"), float(sigma_b)

    flat = {key(p, p["sigma_b"]) for p, _ in items if p.get("kind") == "knn" and float(p.get("r", 0.0)) == 0.0}
    out = []
    for params, results in items:
        if params.get("kind") == "knn":
            out.append((dict(params), results))
        elif params.get("kind") == "constant" and key(params, params["sigma"]) not in flat:
            out.append(({**params, "sigma_b": float(params["sigma"]), "r": 0.0}, results))
    return out


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep asks for, before anything is loaded or written.

    ``sigmas`` are canonical specs as the grid gives them (a kNN spec may leave m to the data);
    ``device`` is the resolved device the runs record; ``options`` the runs' speed options;
    ``sigma_reference`` the reference record of the kNN cells (None: the dataset's training split);
    ``sequential`` the settings of an anytime-valid rule (None: fixed n).
    """

    dataset: str
    split: str
    models: tuple[ModelChoice, ...]
    sigmas: tuple[str, ...]
    ns: tuple[int, ...]
    alphas: tuple[float, ...]
    n0: int
    indices: tuple[int, ...]
    seed: int
    device: str
    options: dict = field(default_factory=dict)
    sigma_reference: dict | None = None
    sequential: dict | None = None
    name: str | None = None

    def cells(self) -> list[Cell]:
        """Every cell, models slowest, then sigma functions, n and alpha."""
        return [Cell(m, s, n, a) for m in range(len(self.models)) for s in self.sigmas
                for n in self.ns for a in self.alphas]

    def sweep_name(self) -> str:
        """The sweep's name: the one given, else a description of its grid."""
        if self.name is not None:
            return check_run_name(self.name)
        return f"sweep {self.dataset} {len(self.cells())} runs x {len(self.indices)} points"

    def check(self, allow_long: bool = False) -> None:
        """Refuse, in one line, a grid without cells, with a duplicate cell, or larger than
        GRID_MAX cells (without ``allow_long``) or GRID_LIMIT (at all); checks the points and n0."""
        cells = self.cells()
        if not cells:
            raise InvalidArgument("sweep: the grid is empty (give --sigma-grid, --n and --alpha values)")
        if len(cells) > GRID_LIMIT:
            raise InvalidArgument(f"sweep: {len(cells):,} runs, more than {GRID_LIMIT:,}")
        if len(cells) > GRID_MAX and not allow_long:
            raise InvalidArgument(f"sweep: {len(cells):,} runs, more than {GRID_MAX}; give fewer values (the "
                                  "command line records more with --allow-long)")
        seen: set[tuple] = set()
        for cell in cells:
            key = (self.models[cell.model].checkpoint, cell.sigma, cell.n, cell.alpha)
            if key in seen:
                raise InvalidArgument(f"sweep: the cell {self.models[cell.model].label} {cell.sigma} n={cell.n} "
                                      f"alpha={cell.alpha:g} appears twice")
            seen.add(key)
        if not self.indices:
            raise InvalidArgument("sweep: no point to certify")
        if any(self.n0 > n for n in self.ns):
            raise InvalidArgument(f"--n0 {self.n0} must not exceed --n {min(self.ns)}")

    def identity(self) -> dict:
        """What makes two sweeps the same (``Store.find_sweep``): everything asked for except the
        batch size (it never changes the counts) and the device beyond its type."""
        from smoothviz.store import file_sha256

        return {
            "name": self.sweep_name(), "dataset": self.dataset, "split": self.split,
            "models": [{"checkpoint": m.checkpoint, "sha256": file_sha256(m.checkpoint), "description": m.description}
                       for m in self.models],
            "sigmas": list(self.sigmas), "n": list(self.ns), "alpha": list(self.alphas), "n0": self.n0,
            "indices": list(self.indices), "seed": self.seed, "device": self.device.split(":")[0],
            "options": self.options, "sigma_reference": self.sigma_reference, "sequential": self.sequential,
        }

    def run_name(self, cell: Cell) -> str:
        """A child run's name: the sweep's, the model's label, the sigma spec, n (and alpha when it varies)."""
        tail = f"{self.models[cell.model].label} {cell.sigma} n={cell.n}"
        if len(self.alphas) > 1:
            tail += f" alpha={cell.alpha:g}"
        head = self.sweep_name()
        room = RUN_NAME_MAX - len(tail) - 2
        if room < 8:
            return tail[-RUN_NAME_MAX:].strip()
        return f"{head[:room].rstrip()}: {tail}"


# ---------------------------------------------------------------------------------------------
# Shared kNN distances
# ---------------------------------------------------------------------------------------------


class SharedDistances:
    """The sigma functions of a sweep's runs, with kNN distances computed once per (data, split,
    k, reference) on the sweep's points: ``sigma_for(run)`` builds the first kNN sigma of a group
    from its spec, remembers the points' distances, and makes every other one of the group with
    ``KNN.with_parameters`` (None for a constant sigma, or a kNN spec without m: they share nothing)."""

    def __init__(self, device: str | None = None) -> None:
        self.device = device
        self._bases: dict[tuple, Any] = {}
        self.groups_built = 0

    def sigma_for(self, run: Mapping[str, Any]):
        """The sigma function of ``run`` (its spec, dataset, split, indices, device, options)."""
        import json

        import torch

        from smoothviz.certify import select_split
        from smoothviz.data import load_dataset, resolve_name
        from smoothviz.device import resolve_device
        from smoothviz.knn_reference import build_run_sigma
        from smoothviz.sigma import parse_sigma_spec

        params = parse_sigma_spec(run["sigma_spec"])
        if params["kind"] != "knn" or params["m"] is None:  # a sweep's kNN runs record their m
            return None
        dev = resolve_device(self.device or run.get("device") or "auto")
        reference = (run.get("options") or {}).get("sigma_reference")
        indices = [int(i) for i in run["indices"]]
        key = (resolve_name(run["dataset"]), run.get("split") or "test", params["k"],
               json.dumps(reference, sort_keys=True), tuple(indices), str(dev))
        base = self._bases.get(key)
        if base is None:
            dataset = load_dataset(key[0])
            base = build_run_sigma(run["sigma_spec"], dataset, reference, dev)
            xs, _ = select_split(dataset, key[1])
            with torch.inference_mode():
                base.remember_distances(xs[torch.tensor(indices, dtype=torch.int64)].to(dev))
            self._bases[key] = base
            self.groups_built += 1
        return base.with_parameters(params["sigma_b"], params["r"], params["m"], params["sigma_min"],
                                    params["sigma_max"])


# ---------------------------------------------------------------------------------------------
# Preparing and recording a sweep
# ---------------------------------------------------------------------------------------------


@dataclass
class PreparedSweep:
    """A plan checked against the data and models: each sigma spec as the runs record it (m
    resolved), sigma(x) warnings, the sampling rate of each model, the time estimate, and the kNN
    functions that computed an m (cached for their reference points once the sweep is recorded)."""

    plan: SweepPlan
    specs: dict[str, str]
    warnings: list[str]
    rates: list[cost.Rate]
    estimate: cost.Estimate
    computed: list[Any] = field(default_factory=list)


def _run_fields(plan: SweepPlan, cell: Cell, spec: str, batch_size: int | str | None) -> dict:
    """``Store.create_run``'s keyword arguments of a cell's run (its spec with m resolved)."""
    from smoothviz.sigma import parse_sigma_spec, semi_elasticity

    params = parse_sigma_spec(spec)
    model = plan.models[cell.model]
    options = {**plan.options, **model.description}
    if params["kind"] == "knn" and plan.sigma_reference is not None:
        options["sigma_reference"] = plan.sigma_reference
    return {"name": plan.run_name(cell), "dataset": plan.dataset, "split": plan.split,
            "checkpoint": model.checkpoint, "sigma_spec": spec, "sigma_params": params, "r": semi_elasticity(params),
            "n0": plan.n0, "n": cell.n, "alpha": cell.alpha, "device": plan.device, "indices": list(plan.indices),
            "seed": plan.seed, "batch_size": batch_size if isinstance(batch_size, int) else None,
            "options": options, "sequential": plan.sequential}


def sweep_estimate(parts: Sequence[tuple[int, int, int, cost.Rate]]) -> cost.Estimate:
    """Time of the runs ``parts`` = (points left, n0, n, rate) one after the other."""
    seconds = sum(points * (n0 + n) / rate.samples_per_second for points, n0, n, rate in parts)
    samples = sum(points * (n0 + n) for points, n0, n, _ in parts)
    sources = sorted({rate.source for *_, rate in parts})
    runs = sum(1 for points, *_ in parts if points)
    return cost.Estimate(seconds, f"{cost.duration_text(seconds)} ({cost.plural(runs, 'run')}, "
                                  f"{cost.plural(samples, 'noisy sample')} in all; rates {', '.join(sources)})")


def prepare_sweep(plan: SweepPlan, batch_size: int | str | None = None, rates_cache: Path | None = None
                  ) -> PreparedSweep:
    """Check a plan completely before anything is written; computes what the runs record.

    kNN specs without m get the m of their (data, k, reference), computed once; sigma(x) of every
    sigma function is checked on the points (from the shared distances); each model is loaded and
    checked against the data with its first cell's run (``certify.prepare_run``) and its sampling
    rate read or measured. Raises a one-line SmoothvizError naming what is wrong.
    """
    import torch

    from smoothviz.certify import prepare_run, select_split
    from smoothviz.data import load_dataset
    from smoothviz.device import resolve_device
    from smoothviz.knn_reference import build_run_sigma
    from smoothviz.sigma import (
        build_sigma,
        canonical_spec,
        check_sigma_values,
        parse_sigma_spec,
        span_warning,
    )
    from smoothviz.store import file_sha256

    plan.check(allow_long=True)
    dataset = load_dataset(plan.dataset)
    xs, _ = select_split(dataset, plan.split)
    bad = [i for i in plan.indices if not 0 <= i < xs.shape[0]]
    if bad:
        raise InvalidArgument(f"indices {bad[:5]} are outside the {plan.split} split (size {xs.shape[0]})")
    dev = resolve_device(plan.device)
    points = xs[torch.tensor(list(plan.indices), dtype=torch.int64)].to(dev)
    bases: dict[int, Any] = {}  # per k: a kNN sigma function holding the points' distances
    data_m: dict[int, float] = {}  # per k: m from the reference points, where a spec leaves it out
    computed: list[Any] = []  # the functions that computed an m the kNN cache may remember
    specs: dict[str, str] = {}
    warnings: list[str] = []
    functions: dict[str, Any] = {}
    for spec in plan.sigmas:
        params = parse_sigma_spec(spec)
        if params["kind"] == "constant":
            fn = build_sigma(spec)
        else:
            k = params["k"]
            if k not in bases or (params["m"] is None and k not in data_m):
                base = build_run_sigma(spec, dataset, plan.sigma_reference, dev)
                if params["m"] is None:
                    data_m[k] = base.m
                    computed.append(base)
                if k not in bases:
                    with torch.inference_mode():
                        base.remember_distances(points)
                    bases[k] = base
            m = params["m"] if params["m"] is not None else data_m[k]
            fn = bases[k].with_parameters(params["sigma_b"], params["r"], m, params["sigma_min"], params["sigma_max"])
        with torch.inference_mode():
            values = fn(points)
        check_sigma_values(values, fn.spec, list(plan.indices))
        spread = span_warning(values)
        if spread:
            warnings.append(f"{spec}: {spread}")
        specs[spec] = canonical_spec(fn.params()) if params["kind"] == "knn" else spec
        functions[spec] = fn
    rates: list[cost.Rate] = []
    parts = []
    cells = plan.cells()
    for m, model in enumerate(plan.models):
        first = next(c for c in cells if c.model == m)
        run = _run_fields(plan, first, specs[first.sigma], batch_size)
        prepared = prepare_run({**run, "batch_size": batch_size}, trust_code=model.trust_code,
                               sigma_fn=functions[first.sigma])
        ds = prepared.dataset
        _, rate = cost.engine_rate(file_sha256(prepared.checkpoint) or "", prepared.engine, ds.input_shape,
                                   ds.num_classes, prepared.device, run["options"], rates_cache)
        rates.append(rate)
        parts += [(len(plan.indices), plan.n0, c.n, rate) for c in cells if c.model == m]
    return PreparedSweep(plan, specs, warnings, rates, sweep_estimate(parts), computed)


def record_sweep(store: Store, prepared: PreparedSweep, batch_size: int | str | None = None) -> int:
    """Record a prepared sweep and its runs (status pending) in the store; returns the sweep's id."""
    from smoothviz.knn_reference import remember_statistics

    plan = prepared.plan
    for fn in prepared.computed:
        remember_statistics(fn)
    identity = plan.identity()
    cells = []
    for position, cell in enumerate(plan.cells()):
        run = _run_fields(plan, cell, prepared.specs[cell.sigma], batch_size)
        model = plan.models[cell.model]
        record = {"position": position, "model": model.checkpoint, "label": model.label, "sigma_spec": cell.sigma,
                  "spec": run["sigma_spec"], **sigma_parameters(run["sigma_spec"]), "n": cell.n,
                  "alpha": cell.alpha, "trust_code": model.trust_code,
                  "run": {k: v for k, v in run.items() if k != "indices"}}
        cells.append((record, run))
    config = {**identity, "points": len(plan.indices), "runs": len(cells)}
    return store.create_sweep(plan.sweep_name(), identity, config, cells)


# ---------------------------------------------------------------------------------------------
# Executing a sweep
# ---------------------------------------------------------------------------------------------


def _finished(cell: Mapping[str, Any]) -> bool:
    return cell["run_id"] is not None and cell["status"] == "done" and cell["done"] == cell["total"]


class GridProgress:
    """Progress of the whole grid: the points stored in every run, plus what the engine of the
    run in flight has done; rate and ETA from its samples per second."""

    def __init__(self, record: Mapping[str, Any], report: ProgressFn | None) -> None:
        self.report = report
        self.cells = {c["run_id"]: c for c in record["cells"] if c["run_id"] is not None}
        self.stored = {run_id: c["done"] for run_id, c in self.cells.items()}
        self.per_point = {run_id: int(c["cell"]["run"].get("n0") or 0) + int(c["cell"]["n"])
                          for run_id, c in self.cells.items()}
        self.total = sum(c["total"] for c in self.cells.values())
        self.runs_total = len(record["cells"])
        self.runs_done = sum(_finished(c) for c in record["cells"])

    def for_run(self, run_id: int) -> ProgressFn:
        """The engine's progress callback while ``run_id`` executes."""
        def on_progress(info: dict) -> None:
            if self.report is None:
                return
            before = sum(self.stored.values())
            engine_total = int(info.get("total", 0))
            done = min(before + int(info.get("done", 0)), self.total)
            fraction = (before + float(info.get("fraction", 0.0)) * engine_total) / self.total if self.total else 1.0
            left = sum((self.cells[r]["total"] - self.stored[r]) * self.per_point[r] for r in self.cells)
            left -= int(info.get("samples", 0))
            elapsed, samples = float(info.get("elapsed", 0.0)), int(info.get("samples", 0))
            eta = max(left, 0) / (samples / elapsed) if elapsed > 0 and samples > 0 else None
            self.report({"done": done, "total": self.total, "fraction": min(max(fraction, 0.0), 1.0),
                         "rate": info.get("rate"), "eta": eta, "run": run_id, "runs_done": self.runs_done,
                         "runs_total": self.runs_total})
        return on_progress

    def finished(self, run_id: int, stored: int, done: bool) -> None:
        """Record what ``run_id`` stored, and whether it is done."""
        self.stored[run_id] = stored
        self.runs_done += int(done)


class _SweepCancel:
    """The sweep's cancel flag, read from the store at most every CANCEL_POLL_SECONDS."""

    def __init__(self, store: Store, sweep_id: int) -> None:
        self.store, self.sweep_id = store, sweep_id
        self.last = -math.inf
        self.value = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self.value and now - self.last >= CANCEL_POLL_SECONDS:
            self.last = now
            self.value = self.store.sweep_cancel_requested(self.sweep_id)
        return self.value


def ensure_runs(store: Store, sweep_id: int) -> dict:
    """The sweep's record after creating the runs of cells whose runs were deleted."""
    record = store.sweep(sweep_id)
    for cell in record["cells"]:
        if cell["run_id"] is None:
            run = {**cell["cell"]["run"], "indices": list(record["config"]["indices"])}
            store.replace_sweep_run(sweep_id, cell["position"], run)
    return store.sweep(sweep_id)


RunHook = Callable[[dict, dict, str, int], None]


def execute_sweep(
    store: Store,
    sweep_id: int,
    progress: ProgressFn | None = None,
    device: str | None = None,
    batch_size: int | str | None = None,
    processes: int = 1,
    on_run: RunHook | None = None,
) -> str:
    """Execute or resume a recorded sweep; returns its final status ("done" or "cancelled").

    The cells whose runs are not done run in grid order, each resuming its missing points
    (``certify.run_certification``; under torchrun on ``processes`` ranks when more than one).
    A cancel request stops the run in flight after its batch and starts no other. A run that
    fails marks the sweep failed (naming the run) and raises. ``on_run(cell, run, status,
    certified)`` is called after each run executed (``certified``: its points certified now);
    ``device`` and ``batch_size`` override the recorded ones.
    """
    from smoothviz.certify import check_executable, prepare_run, run_certification

    record = store.sweep(sweep_id)
    if store.sweep_executing(sweep_id) and record["pid"] != os.getpid():
        raise StoreError(f"sweep {sweep_id} is already being executed by process {record['pid']} on {record['host']}")
    record = ensure_runs(store, sweep_id)
    todo = [c for c in record["cells"] if not _finished(c)]
    for cell in todo:
        check_executable(store.run(cell["run_id"]))
    grid = GridProgress(record, progress)
    cancel = _SweepCancel(store, sweep_id)
    shared = SharedDistances(device)
    store.set_sweep_status(sweep_id, "running", f"{len(todo)} of {cost.plural(len(record['cells']), 'run')} to do")
    current: dict | None = None
    try:
        for cell in todo:
            if cancel():
                raise Cancelled("cancelled")
            current = cell
            run_id = int(cell["run_id"])
            run = store.run(run_id)
            before = int(run["done"])
            if processes > 1:
                status = _launch_child(store, run_id, processes, device, batch_size)
            else:
                prepared = prepare_run(run, device, batch_size, trust_code=bool(cell["cell"].get("trust_code")),
                                       sigma_fn=shared.sigma_for(run))
                status = run_certification(store, run_id, progress=grid.for_run(run_id), cancel=cancel,
                                           prepared=prepared)
            after = store.run(run_id)
            grid.finished(run_id, int(after["done"]), status == "done")
            if on_run is not None:
                on_run(cell, after, status, int(after["done"]) - before)
            if status == "cancelled":
                raise Cancelled("cancelled")
        current = None
    except Cancelled:
        record = store.sweep(sweep_id)
        store.set_sweep_status(sweep_id, "cancelled", f"cancelled after {record['runs_done']} of "
                                                      f"{cost.plural(len(record['cells']), 'run')}")
        return "cancelled"
    except KeyboardInterrupt:
        store.set_sweep_status(sweep_id, "interrupted", "interrupted by the user; rerun to resume")
        raise
    except SmoothvizError as exc:
        where = f"run {current['run_id']}: " if current is not None else ""
        store.set_sweep_status(sweep_id, "failed", f"{where}{exc}"[:300])
        raise
    except BaseException as exc:
        store.set_sweep_status(sweep_id, "failed", f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
        raise
    store.set_sweep_status(sweep_id, "done", f"{cost.plural(len(record['cells']), 'run')} done")
    return "done"


def _launch_child(store: Store, run_id: int, processes: int, device: str | None,
                  batch_size: int | str | None) -> str:
    """Execute one run on ``processes`` ranks of this machine (torchrun); its final status."""
    from smoothviz import launch
    from smoothviz.commands import certify as certify_verb

    parser = argparse.ArgumentParser()
    certify_verb.add_arguments(parser)
    argv = ["--run-id", str(run_id), "--db", str(store.path), "--processes", str(processes)]
    if device:
        argv += ["--device", device]
    if batch_size is not None:
        argv += ["--batch-size", str(batch_size)]
    code = launch.launch("certify", parser.parse_args(argv), certify_verb.add_arguments)
    status = store.run(run_id)["status"]
    if status in ("done", "cancelled"):
        return status
    raise StoreError(f"its ranks ended with code {code} and the run is {status}: "
                     f"{store.run(run_id)['message'] or 'see the output above'}")
