"""``smoothviz audit-sigma``: a lower bound on a sigma function's semi-elasticity, from data.

Builds the sigma function of --sigma on the dataset (kNN needs its training split; a ``ddrs:``
spec, data-dependent smoothing, needs the base classifier --model), searches pairs of inputs
for the largest |ln sigma(x) - ln sigma(y)| / ||x - y|| (smoothviz.audit) and prints it as JSON,
flagged when it exceeds the declared r (or no r is declared). A ddrs sigma costs n * G forward
passes per input, so its search uses a smaller budget. torch loads in ``run``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from smoothviz.commands._args import non_negative, positive_int
from smoothviz.commands.witness import seed

NAME = "audit-sigma"
HELP = (
    "Print, as JSON, a lower bound on the semi-elasticity r of a sigma function found from data "
    "(random pairs, segments, perturbations, gradient ascent), flagged when the declared r is smaller."
)

_DDRS_BUDGET = {"num_pairs": 256, "num_segments": 16, "segment_points": 8, "num_perturbations": 16,
                "ascent_starts": 2, "refine": 4}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the dataset, the sigma spec and the audit options."""
    parser.add_argument("--dataset", default="digits", help="dataset whose test points are searched (default digits)")
    parser.add_argument("--sigma", required=True, metavar="SPEC",
                        help="constant:S, knn:SIGMA_B,R,K[,m=M][,min=A][,max=B] or "
                             "ddrs:SIGMA_MIN,SIGMA_MAX,G[,n=N][,alpha=A][,seed=S] (needs --model)")
    parser.add_argument("--declared-r", type=non_negative, default=None,
                        help="the semi-elasticity claimed for sigma (default: the spec's own r; none for ddrs)")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint of the base classifier (ddrs only)")
    parser.add_argument("--points", type=positive_int, default=128, help="test points to search around (default 128)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the search (default 0)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")


def run(args: argparse.Namespace) -> int:
    """Build the sigma function, audit it and print one JSON object."""
    import torch

    from smoothviz import ddrs
    from smoothviz.audit import audit_sigma
    from smoothviz.data import load_dataset
    from smoothviz.device import resolve_device
    from smoothviz.errors import InvalidArgument
    from smoothviz.models import load_checkpoint
    from smoothviz.sigma import build_sigma

    device = resolve_device(args.device)
    ds = load_dataset(args.dataset)
    if args.sigma.strip().lower().startswith("ddrs:"):
        params = ddrs.parse_ddrs_spec(args.sigma)
        if args.model is None:
            raise InvalidArgument("--model is needed for a ddrs sigma (it optimises sigma for that classifier)")
        model, _ = load_checkpoint(args.model, device=device, expected_dataset=ds.name)
        sigma_fn = ddrs.build_ddrs(params, model)
    else:
        if args.model is not None:
            raise InvalidArgument("--model is only used by ddrs sigma specs")
        sigma_fn = build_sigma(args.sigma, ds.train_x, device=device)
    gen = torch.Generator().manual_seed(args.seed)
    count = min(args.points, ds.test_x.shape[0])
    if count < 2:
        raise InvalidArgument("--points must be at least 2")
    chosen = torch.randperm(ds.test_x.shape[0], generator=gen)[:count]
    # A ddrs sigma costs n * G forward passes per input: search with a few hundred evaluations.
    budget = _DDRS_BUDGET if isinstance(sigma_fn, ddrs.DataDependentSigma) else {}
    result = audit_sigma(sigma_fn, ds.test_x[chosen], train=ds.train_x, declared_r=args.declared_r,
                         seed=args.seed, device=device, **budget)
    pair = result.pair
    print(json.dumps({
        "dataset": ds.name, "sigma": sigma_fn.spec, "dim": ds.dim, "declared_r": result.declared_r,
        "audited_r": result.semi_elasticity, "audited_r_is_a_lower_bound": True, "flagged": result.flagged,
        "pair": None if pair is None else {"distance": pair.distance, "sigma_x": pair.sigma_x,
                                           "sigma_y": pair.sigma_y, "method": pair.method},
        "by_method": result.by_method, "evaluations": result.evaluations, "notes": result.notes,
    }))
    return 0
