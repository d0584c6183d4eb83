"""``smoothviz bound``: the two-Gaussian worst-case probability at x1 for a given p_A at x0."""

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

NAME = "bound"
HELP = (
    "Print the smallest probability of class A at x1 (noise N(0, sigma1^2 I)) over all "
    "classifiers with probability p_A at x0 (noise N(0, sigma0^2 I)), as JSON {\"bound\": ...}."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the worst-case inputs."""
    parser.add_argument("--sigma0", type=positive, required=True,
                        help="noise level sigma(x0) at the certified input (> 0)")
    parser.add_argument("--sigma1", type=positive, required=True,
                        help="noise level sigma(x1) at the perturbed input (> 0)")
    parser.add_argument("--distance", type=non_negative, required=True,
                        help="L2 distance ||x1 - x0|| (>= 0)")
    parser.add_argument("--pa", type=probability, required=True,
                        help="probability of the top class A at x0, in (0, 1]")
    parser.add_argument("--dim", type=dimension, required=True,
                        help=f"input dimension N, e.g. 3072 for CIFAR-10 (integer from 1 to {DIM_MAX:.0e})")


def run(args: argparse.Namespace) -> int:
    """Compute the Neyman-Pearson worst case and print it as one JSON object."""
    from smoothviz import bounds

    value = float(bounds.worst_case_probability(args.sigma0, args.sigma1, args.distance, args.pa, args.dim))
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InvalidArgument("the bound could not be computed for these inputs (no finite probability)")
    print(json.dumps({"bound": value}))
    return 0
