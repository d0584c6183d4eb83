"""``smoothviz radius``: the sound certified L2 radius for input-dependent (semi-elastic) sigma."""

from __future__ import annotations

import argparse
import json
import math

from smoothviz.commands._args import (
    DIM_MAX,
    dimension,
    non_negative,
    positive,
    probability,
)
from smoothviz.errors import InvalidArgument

NAME = "radius"
HELP = (
    "Print the sound certified L2 radius for a sigma function with semi-elasticity r "
    "(|ln sigma(x) - ln sigma(y)| <= r ||x - y||) as JSON {\"radius\": ...}; with --naive also "
    "the naive radius sigma0 * Phi^-1(p_A), which is NOT a guarantee when r > 0. "
    "p_A <= 1/2 gives radius 0 (abstain); p_A = 1 gives Infinity."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the radius inputs."""
    parser.add_argument("--pa", type=probability, required=True,
                        help="lower confidence bound p_A of the top class at x0, in (0, 1]")
    parser.add_argument("--sigma0", type=positive, required=True,
                        help="noise level sigma(x0) at the certified input (> 0)")
    parser.add_argument("--r", type=non_negative, required=True,
                        help="semi-elasticity of sigma (>= 0); r = 0 gives Cohen's radius")
    parser.add_argument("--dim", type=dimension, required=True,
                        help=f"input dimension N, e.g. 3072 for CIFAR-10 (integer from 1 to {DIM_MAX:.0e})")
    parser.add_argument("--naive", action="store_true",
                        help="also print naive_radius = sigma0 * Phi^-1(p_A) and "
                             "naive_is_not_a_guarantee: true (the certificate earlier "
                             "input-dependent works reported; it is not sound for r > 0)")


def _checked(name: str, value: float, p_a: float) -> float:
    """``value`` when it is a radius to print: finite, or Infinity exactly where p_A = 1."""
    if math.isnan(value) or value < 0 or (math.isinf(value) and p_a < 1.0):
        raise InvalidArgument(f"the {name} could not be computed for these inputs (got {value})")
    return value


def run(args: argparse.Namespace) -> int:
    """Compute the input-dependent radius (and optionally the naive one) and print JSON."""
    import numpy as np

    from smoothviz import bounds

    radius = _checked("radius", float(bounds.input_dependent_radius(args.pa, args.sigma0, args.r, args.dim)), args.pa)
    out: dict[str, float | bool] = {"radius": radius}
    if args.naive:
        with np.errstate(over="ignore"):
            naive = float(bounds.naive_radius(args.pa, args.sigma0)) if args.pa > 0.5 else 0.0
        out["naive_radius"] = _checked("naive radius", naive, args.pa)
        out["naive_is_not_a_guarantee"] = True
    print(json.dumps(out))
    return 0
