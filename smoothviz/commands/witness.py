"""``smoothviz witness``: an explicit counterexample to a naive input-dependent certificate.

Builds the Neyman-Pearson worst-case base classifier f* for (dim, sigma0, p_A) at x0 and
(distance, sigma1) at x1 (smoothviz.witness) and prints one JSON object: the naive radius
sigma0 * Phi^-1(p_A), the sound radius for --r (default: the smallest r that allows sigma1 at
that distance, |ln(sigma1/sigma0)| / distance), the worst-case probability of class A at x1 and
whether the naive certificate is broken. With --verify N the engine samples f* in the full
dimension: CERTIFY at x0 and an upper confidence bound on P(A) at x1. torch loads in ``run``.
"""

from __future__ import annotations

import argparse
import json

from smoothviz.commands._args import non_negative, open_probability, positive, positive_int

NAME = "witness"
HELP = (
    "Print, as JSON, the worst-case base classifier's verdict on a naive certificate "
    "sigma0 * Phi^-1(p_A) at distance D with sigma1 = sigma(x1): naive_radius, sound_radius, "
    "worst_case_probability at x1 and broken (the naive certificate is NOT a guarantee); "
    "--verify N checks it by Monte Carlo in the full dimension."
)


def seed(text: str) -> int:
    """A seed: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{value} is outside 0 to 2^63 - 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the witness inputs and the verification options."""
    parser.add_argument("--dim", type=positive_int, required=True,
                        help="input dimension N, e.g. 64 (digits), 784 (MNIST), 3072 (CIFAR-10)")
    parser.add_argument("--sigma0", type=positive, required=True, help="sigma(x0) at the certified input (> 0)")
    parser.add_argument("--pa", type=open_probability, required=True,
                        help="probability of class A at x0 under sigma0, in (0, 1)")
    parser.add_argument("--sigma1", type=positive, required=True, help="sigma(x1) at the nearby input (> 0)")
    parser.add_argument("--distance", type=non_negative, required=True,
                        help="||x1 - x0|| (>= 0; 0 needs sigma1 = sigma0)")
    parser.add_argument("--r", type=non_negative, default=None,
                        help="semi-elasticity for the sound radius (default |ln(sigma1/sigma0)| / distance)")
    parser.add_argument("--verify", type=positive_int, default=None, metavar="NSAMPLES",
                        help="sample f* NSAMPLES times at x0 (CERTIFY) and at x1 with the engine")
    parser.add_argument("--n0", type=positive_int, default=100, help="CERTIFY's selection samples at x0 (default 100)")
    parser.add_argument("--alpha", type=open_probability, default=0.001,
                        help="confidence level of the bounds, in (0, 1) (default 0.001)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the noise (default 0)")
    parser.add_argument("--batch-size", type=positive_int, default=2048, help="noisy samples per forward batch")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")


def run(args: argparse.Namespace) -> int:
    """Build the witness (and verify it) and print one JSON object."""
    from smoothviz import witness
    from smoothviz.device import resolve_device
    from smoothviz.errors import InvalidArgument

    if args.verify is not None and args.n0 > args.verify:
        raise InvalidArgument(f"--n0 {args.n0} exceeds --verify {args.verify}")
    device = resolve_device(args.device) if args.verify is not None else None
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
        out["verify"] = {
            "n0": v.n0, "n": v.n, "alpha": v.alpha, "seed": v.seed,
            "x0": {"counts": v.counts_x0, "predict": v.predict_x0, "p_a_lower": v.p_a_lower,
                   "interval": list(v.interval_x0), "naive_radius_issued": v.naive_radius_issued,
                   "sound_radius_issued": v.sound_radius_issued},
            "x1": {"counts": v.counts_x1, "p_a_upper": v.p_a_upper_x1, "interval": list(v.interval_x1)},
            "issued_covers_x1": v.issued_covers_x1, "x1_not_a": v.x1_not_a, "confirmed": v.confirmed,
            "seconds": v.seconds,
        }
    print(json.dumps(out))
    return 0
