"""``smoothviz table``: certified accuracy of stored runs at chosen radii (text or JSON).

Beside the accuracies: the mean samples per point (selection + estimation: n0 + n for a fixed-n
run, what each point used for a sequential one) and the run's mode, so a sequential run's
savings read next to its accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import TYPE_CHECKING

from smoothviz.commands._args import add_db_argument, parse_radii

if TYPE_CHECKING:
    from smoothviz.store import Store

NAME = "table"
HELP = "Print the certified accuracy of runs at radii (plain text or --json)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run id or unique run name (several to compare)")
    parser.add_argument("--radii", default="0,0.25,0.5,0.75,1.0",
                        help="comma-separated radii (default 0,0.25,0.5,0.75,1.0)")
    parser.add_argument("--use", choices=("radius", "naive"), default="radius",
                        help="sound radius (default) or the naive sigma(x)*Phi^-1(p_A), which is no guarantee")
    parser.add_argument("--curve", action="store_true",
                        help="print the full step curve (every distinct radius) instead of the radii")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_db_argument(parser)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def run_report(store: Store, ref: str, radii: list[float], use: str, curve: bool) -> dict:
    """The numbers ``table`` prints for one run."""
    from smoothviz import analysis
    from smoothviz.audit import audit_warning

    run_id = store.resolve_run(ref)
    run = store.run(run_id)
    df = store.results(run_id)
    column = "naive_radius" if use == "naive" else "radius"
    frame = analysis.accuracy_curve(df, use=column) if curve else analysis.accuracy_table(df, radii, use=column)
    used = store.sample_counts(run_id)
    return {
        "run": run_id, "name": run["name"], "dataset": run["dataset"], "sigma": run["sigma_spec"],
        "n": run["n"], "alpha": run["alpha"], "status": run["status"], "points": len(df),
        "mode": "fixed-n" if run["sequential"] is None else run["sequential"]["mode"],
        "sequential": run["sequential"],
        "samples_per_point": _finite(sum(used) / len(used)) if used else None,
        "total": run["total"], "use": column,
        "table": [{"radius": float(r), "certified_accuracy": _finite(a)} for r, a in frame.itertuples(index=False)],
        "average_certified_radius": _finite(analysis.average_certified_radius(df, use=column)),
        "abstention_rate": _finite(analysis.abstention_rate(df)),
        "ceiling": _finite(analysis.run_ceiling(run)),
        "certificate": analysis.NAIVE_ONLY if analysis.naive_only(run) else "sound",
        "sigma_audit": (run.get("options") or {}).get("sigma_audit"),
        "warning": audit_warning(run),
    }


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def run(args: argparse.Namespace) -> int:
    from smoothviz.store import Store

    radii = parse_radii(args.radii)
    with Store(args.db, create=False) as store:
        reports = [run_report(store, ref, radii, args.use, args.curve) for ref in args.runs]
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
        return 0
    if args.curve:
        for rep in reports:
            print(f"run {rep['run']} ({rep['name']}), {rep['use']}: {rep['points']} points")
            print(f"{'radius':>10}  certified accuracy")
            for row in rep["table"]:
                print(f"{row['radius']:>10.4f}  {_fmt(row['certified_accuracy'])}")
        _notes(reports, args.use)
        return 0
    name_w = max(4, *(len(str(r["name"])) for r in reports))
    head = f"{'run':>4}  {'name':<{name_w}}  " + "  ".join(f"{'r=' + format(r, 'g'):>7}" for r in radii)
    print(head + f"  {'ACR':>6}  {'abstain':>7}  {'samples/pt':>10}  {'points':>9}  {'ceiling':>7}")
    for rep in reports:
        cells = "  ".join(f"{_fmt(row['certified_accuracy']):>7}" for row in rep["table"])
        print(f"{rep['run']:>4}  {rep['name']:<{name_w}}  {cells}  {_fmt(rep['average_certified_radius']):>6}  "
              f"{_fmt(rep['abstention_rate'], '.1%'):>7}  {_fmt(rep['samples_per_point'], ',.0f'):>10}  "
              f"{str(rep['points']) + '/' + str(rep['total']):>9}  {_fmt(rep['ceiling']):>7}")
    if args.use == "naive":
        print("(naive radius sigma(x)*Phi^-1(p_A): not a certificate when sigma depends on the input)")
    _notes(reports, args.use)
    return 0


def _notes(reports: list[dict], use: str) -> None:
    """One line per run whose certificates need a word: naive only, or an audit above the run's r."""
    for rep in reports:
        if rep["certificate"] != "sound" and use != "naive":
            print(f"run {rep['run']}: {rep['certificate']}: its sigma has no semi-elasticity, so its sound radius is 0 "
                  "(--use naive shows the naive radii, which are no guarantee)")
        if rep["warning"]:
            print(f"warning: run {rep['run']}: {rep['warning']}")
