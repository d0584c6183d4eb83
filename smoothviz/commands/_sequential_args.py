"""The ``--sequential`` arguments of ``smoothviz certify`` (anytime-valid CERTIFY) and their checks.

``certify --sequential`` replaces "n estimation samples, then one Clopper-Pearson bound" by a
confidence sequence for p_A that is read at fixed checkpoints; each point stops as soon as its
certificate is settled (``smoothviz.sequential_engine``), and the certificate keeps its level
alpha at that data-dependent time. Two modes:

- fixed-radius (``--radius R``): "is x certified at R?"; a point stops once its lower bound
  reaches the p_A that R needs, or its upper bound falls below it;
- radius (default): sample until the radius is as good as it will get: it reached
  ``--max-radius``, grew by less than ``--tolerance`` over a doubling of the samples, the upper
  bound excluded p_A > 1/2 (abstain), or the budget ``--max-n`` is spent.

``--cs`` names the confidence sequence: ``mixture`` (default; ``betting`` is the same sequence:
the beta-binomial mixture of likelihood ratios is the capital of a mixture of constant bets,
Waudby-Smith and Ramdas 2024) or ``union`` (Clopper-Pearson bounds with a union bound over the
checkpoints). The run records its rule in the store; rerunning the command resumes it.

Wiring in ``commands/certify.py``: ``add_sequential_arguments(parser)`` at the end of its
arguments, ``check_sequential(args)`` first in ``run``, ``config.update(sequential_config(args,
config))`` once a new run's configuration is built, ``print_sequential_summary(store, run_id)``
after its summary. Only the standard library and light smoothviz modules are imported here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from smoothviz import cost
from smoothviz.commands._args import non_negative, positive, positive_int
from smoothviz.errors import InvalidArgument

CS_CHOICES = ("mixture", "betting", "union")
_OPTIONS = ("cs", "max_n", "radius", "max_radius", "tolerance")


def budget(text: str) -> int:
    """--max-n: an integer from 1 to cost.N_MAX."""
    value = positive_int(text)
    if value > cost.N_MAX:
        raise argparse.ArgumentTypeError(f"{value} exceeds {cost.N_MAX:,} samples per point")
    return value


def add_sequential_arguments(parser: argparse.ArgumentParser) -> None:
    """The sequential options, in a group of their own (add them after ``--n``)."""
    group = parser.add_argument_group(
        "sequential certification (anytime-valid: each point stops as soon as its certificate is settled)")
    group.add_argument("--sequential", action="store_true",
                       help="certify with a confidence sequence for p_A instead of a fixed --n")
    group.add_argument("--cs", choices=CS_CHOICES, default=None,
                       help="confidence sequence: mixture (default; 'betting' is the same mixture martingale) "
                            "or union (Clopper-Pearson with a union bound over the checkpoints)")
    group.add_argument("--max-n", type=budget, default=None, metavar="N",
                       help="estimation samples per point at most (default: --n)")
    mode = group.add_mutually_exclusive_group()
    mode.add_argument("--radius", type=non_negative, default=None, metavar="R",
                      help="fixed-radius mode: decide for each point whether it is certified at R")
    mode.add_argument("--max-radius", type=positive, default=None, metavar="R",
                      help="radius mode: stop a point once its radius reaches R (default: no cap)")
    group.add_argument("--tolerance", type=non_negative, default=None, metavar="T",
                       help="radius mode: stop a point once its radius grew by less than T over a doubling "
                            "of its samples (default 0: never for this reason)")
    parser.set_defaults(sequential_n_default=parser.get_default("n"))


def check_sequential(args: argparse.Namespace) -> None:
    """Check the sequential options against each other and the rest; InvalidArgument names one.

    With ``--sequential``, ``args.n`` becomes the budget (``--max-n``, else ``--n``), so the
    command's checks and its time estimate (the worst case, every point using the whole budget)
    see it. Refused: a sequential option without ``--sequential``; ``--sequential`` with
    ``--run`` (a recorded run keeps its own rule); ``--max-n`` beside a different ``--n``;
    a budget below ``--n0``; ``--tolerance`` with ``--radius``.
    """
    given = [name for name in _OPTIONS if getattr(args, name, None) is not None]
    if not args.sequential:
        if given:
            raise InvalidArgument(f"--{given[0].replace('_', '-')} needs --sequential")
        return
    if args.run is not None:
        raise InvalidArgument(f"--sequential with --run {args.run}: a recorded run keeps the rule it was created with")
    if args.max_n is not None:
        if args.n != args.sequential_n_default and args.n != args.max_n:
            raise InvalidArgument(f"--max-n {args.max_n} with --n {args.n}: a sequential run's budget is "
                                  "--max-n; give one of them")
        args.n = args.max_n
    if args.n0 > args.n:
        flag = "--max-n" if args.max_n is not None else "--n"
        raise InvalidArgument(f"{flag} {args.n} is below --n0 {args.n0}: the budget must hold the selection samples' "
                              "count or more")
    if args.radius is not None and args.tolerance is not None:
        raise InvalidArgument(f"--tolerance {args.tolerance:g} applies to radius mode, not with --radius")


def sequential_settings(args: argparse.Namespace):
    """The run's SequentialSettings (None without ``--sequential``); InvalidArgument when the
    rule refuses a value."""
    if not args.sequential:
        return None
    from smoothviz.sequential_engine import SequentialSettings

    mode = "fixed-radius" if args.radius is not None else "radius"
    return SequentialSettings.create(mode, cs=args.cs or "mixture", radius=args.radius,
                                     max_radius=args.max_radius, tolerance=args.tolerance or 0.0)


def sequential_config(args: argparse.Namespace, config: dict) -> dict:
    """What ``--sequential`` changes in a new run's configuration: {} for a fixed-n run; else the
    settings (``sequential``) and, without ``--name``, a name that says the rule and budget."""
    rule = sequential_settings(args)
    if rule is None:
        return {}
    out: dict = {"sequential": rule.to_dict()}
    if args.name is None:
        out["name"] = f"{Path(config['checkpoint']).stem} {config['sigma_spec']} {rule.describe()} max-n={args.n}"
    return out


def print_sequential_summary(store, run_id: int, stream: TextIO | None = None) -> None:
    """Samples per point and why points stopped, for a sequential run (nothing for fixed n)."""
    run = store.run(run_id)
    if run["sequential"] is None:
        return
    stream = stream or sys.stdout
    df = store.results(run_id)
    if not len(df):
        return
    used = store.sample_counts(run_id) or []
    mean = sum(used) / len(used)
    reasons = df["stop_reason"].value_counts()
    stops = ", ".join(f"{reason} {count}" for reason, count in reasons.items())
    fixed = int(run["n0"]) + int(run["n"])
    fewer = f", {fixed / mean:.1f}x fewer" if mean > 0 else ""
    print(f"samples: {mean:,.0f} per point on average (selection + estimation; at most {fixed:,}{fewer}), "
          f"largest {max(used):,}; stopped: {stops}", file=stream)
