"""``smoothviz sweep``: a grid of certifications on the same points, as one resumable job.

    smoothviz sweep --model assets/digits-cnn-constant-0.25.pt \\
        --sigma-grid "knn:{0.12,0.25},{0,0.05,0.1},20" --sigma-grid "constant:{0.12,0.25}" \\
        --n 2000 --points 120

The grid crosses every ``--model`` (repeatable), every sigma function of every ``--sigma-grid``
(repeatable; a sigma spec whose values may be lists in braces, expanded to their product), every
n of ``--n`` and every alpha of ``--alpha`` (comma-separated). Each cell is a certify run on the
same points with the same seed. Rerunning the same command resumes the sweep: it creates nothing
new and certifies only the missing runs and points. ``--sweep ID`` executes or resumes a recorded
sweep, ``--cancel ID`` asks the process executing it to stop, ``--list`` shows the store's sweeps.
``--sequential`` and its options apply to every run, as do the speed options (``--autocast``/``--fast``,
``--channels-last``, ``--compile``, ``--cuda-graphs``); ``--processes K`` runs each on K ranks.

Refused in one line, with nothing written: an empty or malformed grid, a duplicate cell, more than
64 runs without ``--allow-long``, a bad value of any option. Only the standard library and light
smoothviz modules are imported here; the engine loads in ``run``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from smoothviz import cost, launch
from smoothviz.commands._args import add_db_argument, batch_size_arg, open_probability, parse_radii, sample_count, seed_arg
from smoothviz.commands._sequential_args import add_sequential_arguments, check_sequential, sequential_settings
from smoothviz.commands.certify import DEFAULT_ALPHA, DEFAULT_N, DEFAULT_N0, add_speed_arguments, add_split_arguments, speed_options, split_indices
from smoothviz.device import DEVICE_CHOICES_HELP
from smoothviz.errors import InvalidArgument

NAME = "sweep"
HELP = "Certify a grid of sigma functions, models, n and alpha on the same points as one resumable job."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--sweep", default=None, metavar="ID",
                      help="execute or resume this recorded sweep (other grid settings are ignored)")
    what.add_argument("--cancel", default=None, metavar="ID",
                      help="ask the process executing sweep ID to stop after its current batch")
    what.add_argument("--list", action="store_true", help="list the store's sweeps")
    parser.add_argument("--model", action="append", default=None, metavar="MODEL",
                        help="a checkpoint (repeat for several models); smoothviz checkpoints, or what "
                             "certify --model accepts without further flags")
    parser.add_argument("--sigma-grid", action="append", default=None, metavar="SPEC",
                        help="sigma functions as a spec whose values may be lists in braces, e.g. "
                             "knn:{0.12,0.25},{0,0.05},20 or constant:{0.12,0.25} (repeatable; default: each "
                             "model's own sigma)")
    parser.add_argument("--dataset", "--data", dest="dataset", default=None, metavar="DATA",
                        help="a registered dataset or imagefolder:PATH / npz:FILE (default: the models' dataset)")
    parser.add_argument("--sigma-reference", default=None, metavar="SOURCE",
                        help="training points of the knn sigma functions: imagefolder:PATH or npz:FILE")
    parser.add_argument("--n", "--num-samples", dest="n", default=str(DEFAULT_N), metavar="N[,N...]",
                        help=f"estimation samples per point, one or several (default {DEFAULT_N:,})")
    parser.add_argument("--n0", type=sample_count, default=DEFAULT_N0,
                        help=f"selection samples per point (default {DEFAULT_N0})")
    parser.add_argument("--alpha", default=str(DEFAULT_ALPHA), metavar="A[,A...]",
                        help=f"failure probabilities in (0, 1), one or several (default {DEFAULT_ALPHA})")
    add_split_arguments(parser, "every N-th point from 0")
    parser.add_argument("--seed", type=seed_arg, default=0, help="seed of every run's noise (default 0)")
    parser.add_argument("--batch-size", type=batch_size_arg, default=None,
                        help="noisy samples per forward pass, or 'auto'; it never changes the counts")
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
    parser.add_argument("--processes", type=launch.processes_arg, default=1, metavar="K",
                        help="run each certification on K ranks of this machine (torchrun; default 1)")
    parser.add_argument("--name", default=None, help="the sweep's name (its runs' names start with it)")
    add_db_argument(parser)
    parser.add_argument("--new", action="store_true", help="record a new sweep even when this one could be resumed")
    parser.add_argument("--allow-long", action="store_true",
                        help="allow more than 64 runs and an estimate above a day")
    parser.add_argument("--radii", default="0,0.25,0.5,0.75,1.0", help="radii of the summary table")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="with --list: print JSON")
    add_speed_arguments(parser)
    add_sequential_arguments(parser)


def _models(args: argparse.Namespace):
    """(dataset, [ModelChoice], [each model's own sigma spec]) of the --model arguments."""
    from smoothviz.commands.certify import _resolve_model
    from smoothviz.sweep import ModelChoice

    if not args.model:
        raise InvalidArgument("--model: give at least one checkpoint (or --sweep ID to resume a recorded sweep)")
    dataset, choices, own = None, [], []
    for text in args.model:
        ns = argparse.Namespace(model=text, weights=None, model_code=None, trust_archive=False, input_shape=None,
                                num_classes=None, value_range=None, trained_sigma=None, normalisation=None,
                                dataset=args.dataset)
        data, sigma, checkpoint, _, description, trust = _resolve_model(ns)
        if dataset is not None and data != dataset:
            raise InvalidArgument(f"--model {text}: takes {data}, the sweep's other models {dataset}; a sweep "
                                  "certifies one dataset")
        if any(c.checkpoint == checkpoint for c in choices):
            raise InvalidArgument(f"--model {text}: given twice")
        dataset = data
        choices.append(ModelChoice(checkpoint, Path(checkpoint).stem, description, trust))
        own.append(sigma)
    return dataset, choices, own


def build_plan(args: argparse.Namespace):
    """The SweepPlan the arguments ask for, checked (grid, values, points); nothing is written."""
    from smoothviz.data import load_dataset
    from smoothviz.device import resolve_device
    from smoothviz.knn_reference import reference_record
    from smoothviz.sigma import canonical_spec, parse_sigma_spec
    from smoothviz.sweep import SweepPlan, expand_sigma_grid, parse_values

    if args.sequential and args.max_n is not None:
        if args.n != str(DEFAULT_N):
            raise InvalidArgument(f"--max-n {args.max_n} with --n {args.n}: a sequential sweep's budget is --max-n; "
                                  "give one of them")
        ns = [args.max_n]
    else:
        ns = parse_values(args.n, "--n", sample_count)
    alphas = parse_values(args.alpha, "--alpha", open_probability)
    for n in ns:
        check_sequential(argparse.Namespace(**{**vars(args), "run": None, "n": n, "max_n": None}))
    dataset, models, own = _models(args)
    if args.sigma_grid:
        sigmas: list[str] = []
        for text in args.sigma_grid:
            for spec in expand_sigma_grid(text):
                if spec in sigmas:
                    raise InvalidArgument(f"--sigma-grid: {spec} appears twice")
                sigmas.append(spec)
    else:
        missing = [m.label for m, s in zip(models, own) if not s]
        if missing:
            raise InvalidArgument(f"--sigma-grid: {missing[0]} records no sigma; give the grid")
        sigmas = list(dict.fromkeys(canonical_spec(parse_sigma_spec(s)) for s in own))
    ds = load_dataset(dataset)
    reference = None
    if args.sigma_reference is not None:
        if not any(parse_sigma_spec(s)["kind"] == "knn" for s in sigmas):
            raise InvalidArgument("--sigma-reference: only a knn sigma uses reference points")
        reference = reference_record(args.sigma_reference, ds)
    indices = split_indices(args, ds, dataset)
    settings = sequential_settings(args)
    plan = SweepPlan(dataset=dataset, split=args.split, models=tuple(models), sigmas=tuple(sigmas), ns=tuple(ns),
                     alphas=tuple(alphas), n0=args.n0, indices=tuple(indices), seed=args.seed,
                     device=str(resolve_device(args.device)), options=speed_options(args), sigma_reference=reference,
                     sequential=None if settings is None else settings.to_dict(), name=args.name)
    plan.check(args.allow_long)
    return plan


def _new_sweep(args: argparse.Namespace):
    """Find the sweep the arguments describe (to resume it) or check and record it: (store, id)."""
    from smoothviz.store import Store, default_db
    from smoothviz.sweep import prepare_sweep, record_sweep

    plan = build_plan(args)
    db = Path(args.db) if args.db is not None else default_db()
    store = Store(db) if db.exists() else None
    try:
        sweep_id = None if store is None or args.new else store.find_sweep(plan.identity())
        if sweep_id is not None:
            record = store.sweep(sweep_id)
            print(f"sweep {sweep_id}: resuming ({record['runs_done']} of {cost.plural(len(record['cells']), 'run')} "
                  f"done, {record['done']} of {cost.plural(record['total'], 'point')} stored)", file=sys.stderr)
            return store, sweep_id
        prepared = prepare_sweep(plan, args.batch_size, cost.rates_file(db))
        cost.refuse_long(prepared.estimate, "this sweep", args.allow_long, "--n, --points or the grid")
        print(f"estimate: {prepared.estimate.text}", file=sys.stderr)
        for warning in prepared.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if store is None:
            store = Store(db)
        sweep_id = record_sweep(store, prepared, args.batch_size)
        record = store.sweep(sweep_id)
        print(f"sweep {sweep_id} created in {store.path}: {cost.plural(len(record['cells']), 'run')} "
              f"(runs {record['cells'][0]['run_id']}-{record['cells'][-1]['run_id']}) x "
              f"{cost.plural(len(plan.indices), 'point')}", file=sys.stderr)
    except BaseException:
        if store is not None:
            store.close()
        raise
    return store, sweep_id


def _sweep_id(store, text: str) -> int:
    record = store.sweep(text)
    return int(record["id"])


def _recorded_sweep(args: argparse.Namespace):
    from smoothviz.store import Store

    grid = ("model", "sigma_grid", "sigma_reference", "indices", "skip", "points", "name", "sequential", "cs", "max_n",
            "radius", "max_radius", "tolerance", "autocast", "compile", "cuda_graphs")
    given = [f"--{n.replace('_', '-')}" for n in grid if getattr(args, n) not in (None, False)]
    given += ["--channels-last"] if args.channels_last is not None else []
    if given:
        raise InvalidArgument(f"{given[0]} with --sweep {args.sweep}: a recorded sweep keeps its own grid")
    store = Store(args.db, create=False)
    try:
        sweep_id = _sweep_id(store, args.sweep)
        record = store.sweep(sweep_id)
        print(f"sweep {sweep_id}: resuming ({record['runs_done']} of {cost.plural(len(record['cells']), 'run')} done, "
              f"{record['done']} of {cost.plural(record['total'], 'point')} stored)", file=sys.stderr)
    except BaseException:
        store.close()
        raise
    return store, sweep_id


def print_summary(store, sweep_id: int, radii: list[float], stream=None) -> None:
    """One line per cell: its run, sigma, n (and alpha), certified accuracy at the radii, ACR, points."""
    from smoothviz import analysis

    stream = stream or sys.stdout
    record = store.sweep(sweep_id)
    print(f"sweep {sweep_id} ({record['name']}): {record['status']}, {record['runs_done']}/"
          f"{cost.plural(len(record['cells']), 'run')} done, {record['done']}/{cost.plural(record['total'], 'point')}",
          file=stream)
    labels = [f"{c['cell']['label']} {c['cell']['sigma_spec']} n={c['cell']['n']}"
              + (f" a={c['cell']['alpha']:g}" if len(record["config"]["alpha"]) > 1 else "") for c in record["cells"]]
    width = max(4, *(len(text) for text in labels))
    print(f"{'run':>5}  {'cell':<{width}}  " + "  ".join(f"{'r=' + format(r, 'g'):>7}" for r in radii)
          + f"  {'ACR':>6}  {'points':>9}", file=stream)
    for cell, label in zip(record["cells"], labels):
        if cell["run_id"] is None:
            print(f"{'-':>5}  {label:<{width}}  (run deleted)", file=stream)
            continue
        df = store.results(cell["run_id"])
        table = analysis.accuracy_table(df, radii)["certified_accuracy"] if len(df) else [float("nan")] * len(radii)
        acc = "  ".join(f"{a:>7.3f}" for a in table)
        acr = analysis.average_certified_radius(df) if len(df) else float("nan")
        print(f"{cell['run_id']:>5}  {label:<{width}}  {acc}  {acr:>6.3f}  {cell['done']:>4}/{cell['total']:<4}",
              file=stream)
    _print_versus_constant(store, record, radii, stream)


def _print_versus_constant(store, record: dict, radii: list[float], stream) -> None:
    """Each kNN cell (r > 0) minus constant sigma = its sigma_b on the same points, with the
    paired 95% Bonferroni interval and whether the data can tell them apart."""
    from smoothviz import tradeoffs

    cells = [c for c in record["cells"] if c["run_id"] is not None and c["done"]]
    items = [({**c["cell"], "label": f"run {c['run_id']}"}, store.results(c["run_id"])) for c in cells]
    versus = tradeoffs.versus_constant(items, radii, beta=0.05, method="bonferroni", intersect=True)
    if versus.empty:
        return
    print("input-dependent minus constant sigma (same points; paired 95% Bonferroni interval, pointwise in R):",
          file=stream)
    for (label, baseline), group in versus.groupby(["label", "baseline"], sort=False):
        first = group.iloc[0]
        parts = [f"R={row.radius:g} {row.difference:+.3f} [{row.low:+.3f}, {row.high:+.3f}] {row.verdict}"
                 for row in group.itertuples(index=False)]
        print(f"  {label} (sigma_b {first['sigma_b']:g}, r {first['r']:g}) vs {baseline}: " + "; ".join(parts),
              file=stream)


def _list(args: argparse.Namespace) -> int:
    from smoothviz.store import Store

    with Store(args.db, create=False) as store:
        sweeps = store.sweeps()
    rows = [{"sweep": s["id"], "name": s["name"], "status": s["status"], "runs": len(s["cells"]),
             "runs_done": s["runs_done"], "points_done": s["done"], "points": s["total"],
             "run_ids": [c["run_id"] for c in s["cells"]]} for s in sweeps]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no sweeps in this store")
    for row in rows:
        print(f"sweep {row['sweep']} ({row['name']}): {row['status']}, {row['runs_done']}/{row['runs']} runs done, "
              f"{row['points_done']}/{row['points']} points")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from smoothviz.store import Store

    with Store(args.db, create=False) as store:
        sweep_id = _sweep_id(store, args.cancel)
        store.request_sweep_cancel(sweep_id)
        busy = store.sweep_executing(sweep_id)
    print(f"sweep {sweep_id}: cancel requested; " + ("the run in flight stops after its current batch and no other "
                                                     "starts" if busy else "no process is executing it now"))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.list:
        return _list(args)
    if args.cancel is not None:
        return _cancel(args)
    if launch.world_from_env() is not None:
        raise InvalidArgument("sweep runs in one process; --processes K spreads each of its runs over K ranks")
    radii = parse_radii(args.radii)
    from smoothviz.device import keep_cpu_buffers
    from smoothviz.progress import ProgressBar
    from smoothviz.sweep import execute_sweep

    keep_cpu_buffers()
    store, sweep_id = (_recorded_sweep if args.sweep is not None else _new_sweep)(args)
    with store:
        bar = None if args.quiet else ProgressBar("points")
        total = len(store.sweep(sweep_id)["cells"])

        def on_run(cell: dict, run: dict, status: str, certified: int) -> None:
            if bar is not None:
                bar.close()
            print(f"run {run['id']} ({cell['position'] + 1}/{total}: {cell['cell']['label']} {cell['cell']['sigma_spec']} "
                  f"n={cell['cell']['n']}): {status}, {run['done']}/{cost.plural(run['total'], 'point')} "
                  f"({certified} certified now)", file=sys.stderr)

        device = args.device if args.device != "auto" else None
        try:
            status = execute_sweep(store, sweep_id, progress=bar, device=device, batch_size=args.batch_size,
                                   processes=args.processes, on_run=on_run)
        finally:
            if bar is not None:
                bar.close()
        print_summary(store, sweep_id, radii)
    return 0 if status == "done" else 1
