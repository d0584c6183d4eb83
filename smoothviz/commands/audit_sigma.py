"""``smoothviz audit-sigma``: a lower bound on a sigma function's semi-elasticity, from data.

Builds the sigma function of --sigma on the dataset (kNN needs its training split; a ``ddrs:``
spec, data-dependent smoothing, needs the base classifier --model), searches pairs of inputs
for the largest |ln sigma(x) - ln sigma(y)| / ||x - y|| (smoothviz.audit) and prints it as JSON,
flagged when it exceeds the declared r (or no r is declared). With --run RUN the sigma is the
stored run's (rebuilt on its dataset, with its model for ddrs), the search runs around the run's
points against the run's r, and the result is recorded in the run's options (``sigma_audit``),
where ``table`` and the Compare page warn when it exceeds that r. A ddrs sigma costs n * G forward
passes per input, so its search uses a smaller budget. torch loads in ``run``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from smoothviz.commands._args import add_db_argument, non_negative, positive_int
from smoothviz.commands.witness import seed

NAME = "audit-sigma"
HELP = (
    "Print, as JSON, a lower bound on the semi-elasticity r of a sigma function found from data "
    "(random pairs, segments, perturbations, gradient ascent), flagged when the declared r is smaller; "
    "--run records it with a stored run."
)

_DDRS_BUDGET = {"num_pairs": 256, "num_segments": 16, "segment_points": 8, "num_perturbations": 16,
                "ascent_starts": 2, "refine": 4}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the dataset, the sigma spec (or a stored run) and the audit options."""
    parser.add_argument("--dataset", default=None, help="dataset whose test points are searched (default digits)")
    parser.add_argument("--sigma", default=None, metavar="SPEC",
                        help="constant:S, knn:SIGMA_B,R,K[,m=M][,min=A][,max=B] or "
                             "ddrs:SIGMA_MIN,SIGMA_MAX,G[,n=N][,alpha=A][,seed=S] (needs --model)")
    parser.add_argument("--declared-r", type=non_negative, default=None,
                        help="the semi-elasticity claimed for sigma (default: the spec's own r; none for ddrs)")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint of the base classifier (ddrs only)")
    parser.add_argument("--run", default=None, metavar="RUN",
                        help="audit the sigma of this stored run (id or name) around its points and record the "
                             "result with the run (replaces --dataset, --sigma, --model, --declared-r)")
    add_db_argument(parser)
    parser.add_argument("--points", type=positive_int, default=128, help="points to search around (default 128)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the search (default 0)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")


def _sigma_from_spec(args: argparse.Namespace, device):
    """(dataset, sigma function, candidate points) of --dataset/--sigma/--model."""
    from smoothviz.data import load_dataset
    from smoothviz.errors import InvalidArgument
    from smoothviz.models import load_checkpoint
    from smoothviz.sigma import build_sigma, parse_sigma_spec

    if args.sigma is None:
        raise InvalidArgument("--sigma is required (or --run RUN to audit a stored run's sigma)")
    ds = load_dataset(args.dataset or "digits")
    params = parse_sigma_spec(args.sigma)
    model = None
    if params["kind"] == "ddrs":
        if args.model is None:
            raise InvalidArgument("--model is needed for a ddrs sigma (it optimises sigma for that classifier)")
        model, _ = load_checkpoint(args.model, device=device, expected_dataset=ds.name)
    elif args.model is not None:
        raise InvalidArgument("--model is only used by ddrs sigma specs")
    return ds, build_sigma(args.sigma, ds.train_x, device=device, model=model), ds.test_x


def run(args: argparse.Namespace) -> int:
    """Build the sigma function, audit it and print one JSON object (recording it with --run)."""
    import torch

    from smoothviz import ddrs
    from smoothviz.audit import audit_record, audit_sigma, audit_warning
    from smoothviz.device import resolve_device
    from smoothviz.errors import InvalidArgument

    device = resolve_device(args.device)
    store = data = None
    if args.run is not None:
        given = [f"--{name.replace('_', '-')}" for name in ("dataset", "sigma", "model", "declared_r")
                 if getattr(args, name) is not None]
        if given:
            raise InvalidArgument(f"{given[0]}: --run audits the run's own sigma; leave it out")
        from smoothviz import witness_data
        from smoothviz.store import Store

        store = Store(args.db, create=False)
    try:
        if store is not None:
            data = witness_data.load_run_data(store, args.run, device)
            ds, sigma_fn = data.dataset, data.sigma_fn
            pool = data.inputs[torch.tensor(data.results["idx"].to_numpy("int64"))]
            declared = data.declared_r
        else:
            ds, sigma_fn, pool = _sigma_from_spec(args, device)
            declared = args.declared_r
        gen = torch.Generator().manual_seed(args.seed)
        count = min(args.points, pool.shape[0])
        if count < 2:
            raise InvalidArgument("--points must be at least 2 (and the run needs two points)")
        chosen = torch.randperm(pool.shape[0], generator=gen)[:count]
        # A ddrs sigma costs n * G forward passes per input: search with a few hundred evaluations.
        budget = _DDRS_BUDGET if isinstance(sigma_fn, ddrs.DataDependentSigma) else {}
        result = audit_sigma(sigma_fn, pool[chosen], train=ds.train_x, declared_r=declared, seed=args.seed,
                             device=device, **budget)
        record = audit_record(result, points=count, seed=args.seed)
        out = {"dataset": ds.name, "sigma": sigma_fn.spec, "dim": ds.dim, **record}
        if store is not None:
            run_id = int(data.run["id"])
            store.annotate_run(run_id, "sigma_audit", record)
            out = {"run": run_id, **out, "recorded": True,
                   "warning": audit_warning({**data.run, "options": {"sigma_audit": record}})}
    finally:
        if store is not None:
            store.close()
    print(json.dumps(out))
    return 0
