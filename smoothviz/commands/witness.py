"""``smoothviz witness``: explicit counterexamples to naive input-dependent certificates.

Two modes, each printing one JSON object.

Formula mode (--dim, --sigma0, --pa, --sigma1, --distance): builds the Neyman-Pearson worst-case
base classifier f* for (dim, sigma0, p_A) at x0 and (distance, sigma1) at x1 (smoothviz.witness):
the naive radius sigma0 * Phi^-1(p_A), the sound radius for --r (default: the smallest r that
allows sigma1 at that distance, |ln(sigma1/sigma0)| / distance), the worst-case probability of
class A at x1 and whether the naive certificate is broken. With --verify N the engine samples f*
in the full dimension: CERTIFY at x0 and an upper confidence bound on P(A) at x1.

Run mode (--run RUN [--db DB]): for every certified point of a stored run whose naive radius
exceeds its sound radius, searches real inputs x1 near x0 (other points of the split, points on
segments toward training points, sigma-ascent steps) with their actual sigma(x1), and counts the
naive certificates refuted by such a pair plus f* (smoothviz.witness_data); --verify N checks the
refutations by sampling f* with the engine. torch loads in ``run``.
"""

from __future__ import annotations

import argparse
import json

from smoothviz.commands._args import add_db_argument, bounded_int, non_negative, open_probability, positive, positive_int

NAME = "witness"
HELP = (
    "Print, as JSON, the worst-case base classifier's verdict on a naive certificate "
    "sigma0 * Phi^-1(p_A) at distance D with sigma1 = sigma(x1) (naive_radius, sound_radius, "
    "worst_case_probability at x1, broken: the naive certificate is NOT a guarantee), or with --run "
    "how many of a stored run's naive certificates real pairs of inputs refute; --verify N checks by Monte Carlo."
)

FORMULA_ARGUMENTS = ("dim", "sigma0", "pa", "sigma1", "distance")


seed = bounded_int(0, 2**63 - 1, "0 to 2^63 - 1")
"""A seed: an integer from 0 to 2^63 - 1."""

examples_count = bounded_int(0, 1000, "0 to 1000")
"""How many example pairs to print: an integer from 0 to 1000."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the witness inputs, the run mode and the verification options."""
    formula = parser.add_argument_group("formula mode", "one pair (x0, x1) given by its numbers")
    formula.add_argument("--dim", type=positive_int, default=None,
                         help="input dimension N, e.g. 64 (digits), 784 (MNIST), 3072 (CIFAR-10)")
    formula.add_argument("--sigma0", type=positive, default=None, help="sigma(x0) at the certified input (> 0)")
    formula.add_argument("--pa", type=open_probability, default=None,
                         help="probability of class A at x0 under sigma0, in (0, 1)")
    formula.add_argument("--sigma1", type=positive, default=None, help="sigma(x1) at the nearby input (> 0)")
    formula.add_argument("--distance", type=non_negative, default=None,
                         help="||x1 - x0|| (>= 0; 0 needs sigma1 = sigma0)")
    formula.add_argument("--r", type=non_negative, default=None,
                         help="semi-elasticity for the sound radius (default |ln(sigma1/sigma0)| / distance)")
    stored = parser.add_argument_group("run mode", "real pairs of inputs against a stored run's certificates")
    stored.add_argument("--run", default=None, metavar="RUN",
                        help="a run of the store (id or name) with an input-dependent sigma; replaces the formula "
                             "arguments")
    add_db_argument(stored)
    stored.add_argument("--examples", type=examples_count, default=5,
                        help="refuted points printed with their pair (default 5)")
    stored.add_argument("--points", type=positive_int, default=None,
                        help="search at most this many of the points whose naive radius exceeds the sound one, "
                             "evenly spread (default: all; 40 for a ddrs sigma, whose every evaluation samples "
                             "the model n * G times)")
    parser.add_argument("--verify", type=positive_int, default=None, metavar="NSAMPLES",
                        help="sample f* NSAMPLES times at x0 (CERTIFY) and at x1 with the engine")
    parser.add_argument("--n0", type=positive_int, default=100, help="CERTIFY's selection samples at x0 (default 100)")
    parser.add_argument("--alpha", type=open_probability, default=0.001,
                        help="confidence level of the bounds, in (0, 1) (default 0.001)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the noise (default 0)")
    parser.add_argument("--batch-size", type=positive_int, default=2048, help="noisy samples per forward batch")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")


def _verification_record(v) -> dict:
    return {
        "n0": v.n0, "n": v.n, "alpha": v.alpha, "seed": v.seed,
        "x0": {"counts": v.counts_x0, "predict": v.predict_x0, "p_a_lower": v.p_a_lower,
               "interval": list(v.interval_x0), "naive_radius_issued": v.naive_radius_issued,
               "sound_radius_issued": v.sound_radius_issued},
        "x1": {"counts": v.counts_x1, "p_a_upper": v.p_a_upper_x1, "interval": list(v.interval_x1)},
        "issued_covers_x1": v.issued_covers_x1, "x1_not_a": v.x1_not_a, "confirmed": v.confirmed,
        "seconds": v.seconds,
    }


def _formula(args: argparse.Namespace, device) -> dict:
    from smoothviz import witness

    w = witness.build_witness(args.dim, args.sigma0, args.pa, args.distance, args.sigma1, r=args.r)
    out: dict = {
        "dim": w.dim, "sigma0": w.sigma0, "sigma1": w.sigma1, "distance": w.distance, "pa": w.p_a,
        "r": w.r, "r_implied": args.r is None, "admissible": w.admissible, "region": w.region.kind,
        "naive_radius": w.naive_radius, "naive_is_not_a_guarantee": True, "sound_radius": w.sound_radius,
        "worst_case_probability": w.p_x1, "broken": w.broken,
    }
    if args.verify is not None:
        v = witness.verify(w, n=args.verify, alpha=args.alpha, seed=args.seed, batch_size=args.batch_size,
                           device=device, n0=args.n0)
        out["verify"] = _verification_record(v)
    return out


def _stored_run(args: argparse.Namespace, device) -> dict:
    from dataclasses import replace

    from smoothviz import witness_data
    from smoothviz.store import Store

    with Store(args.db, create=False) as store:
        data = witness_data.load_run_data(store, args.run, device)
    settings = witness_data.default_settings(data.sigma_fn)
    if args.points is not None:
        settings = replace(settings, max_points=args.points)
    search = witness_data.search_stored_run(data, settings, device=device)
    if args.verify is not None:
        search = witness_data.verify_search(search, n=args.verify, alpha=args.alpha, seed=args.seed, n0=args.n0,
                                            batch_size=args.batch_size, device=device)
    run = data.run
    return {"run": int(run["id"]), "name": run["name"], "dataset": run["dataset"], "sigma": run["sigma_spec"],
            "certificate": "naive only (no guarantee)" if data.declared_r is None else "sound and naive",
            **witness_data.summary(search, examples=args.examples)}


def run(args: argparse.Namespace) -> int:
    """Build the witness (or search the run) and print one JSON object."""
    from smoothviz.device import resolve_device
    from smoothviz.errors import InvalidArgument

    given = [name for name in (*FORMULA_ARGUMENTS, "r") if getattr(args, name) is not None]
    if args.run is not None and given:
        raise InvalidArgument(f"--{given[0]}: --run takes the pairs from the run; leave out the formula arguments")
    if args.run is None and args.points is not None:
        raise InvalidArgument("--points: only --run searches points")
    if args.run is None:
        missing = [name for name in FORMULA_ARGUMENTS if getattr(args, name) is None]
        if missing:
            raise InvalidArgument(f"--{missing[0]} is required (or --run RUN for a stored run's pairs)")
    if args.verify is not None and args.n0 > args.verify:
        raise InvalidArgument(f"--n0 {args.n0} exceeds --verify {args.verify}")
    device = resolve_device(args.device) if args.verify is not None or args.run is not None else None
    out = _formula(args, device) if args.run is None else _stored_run(args, device)
    print(json.dumps(out))
    return 0
