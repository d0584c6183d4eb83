"""``smoothviz table``: certified accuracy of stored runs at chosen radii (text or JSON).

Beside the accuracies: the mean samples per point (selection + estimation: n0 + n for a fixed-n
run, what each point used for a sequential one) and the run's mode, so a sequential run's
savings read next to its accuracy.

Error bars (``smoothviz.tradeoffs``): ``--ci [LEVEL]`` adds each run's interval over its test
points at every radius (Clopper-Pearson, or ``--ci-method bootstrap``; pointwise in the radius);
``--hp [ALPHA,]RHO`` the high-probability certified accuracy, by the reference code's formula
(labelled as the reference's: not a valid bound in general) and by the exact binomial tail (a
valid 1 - RHO bound), with ALPHA the run's own alpha unless given; ``--paired A,B`` (repeatable)
the difference A minus B on the runs' common points with a paired interval and whether the data
can tell them apart.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import TYPE_CHECKING

from smoothviz.commands._args import (
    _short,
    add_db_argument,
    open_probability,
    parse_radii,
    positive_int,
)
from smoothviz.errors import InvalidArgument

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
    bars = parser.add_argument_group("error bars")
    bars.add_argument("--ci", nargs="?", type=open_probability, const=0.95, default=None, metavar="LEVEL",
                      help="add each run's confidence interval over its test points at every radius "
                           "(LEVEL default 0.95; pointwise in the radius)")
    bars.add_argument("--ci-method", choices=("clopper-pearson", "bootstrap"), default=None,
                      help="exact Clopper-Pearson (default) or a seeded percentile bootstrap (approximate); implies --ci")
    bars.add_argument("--n-boot", type=positive_int, default=2000, metavar="B",
                      help="bootstrap resamples (default 2000)")
    bars.add_argument("--hp", default=None, metavar="[ALPHA,]RHO",
                      help="high-probability certified accuracy at level 1 - RHO, each point's certificate wrong "
                           "with probability ALPHA (default: the run's alpha): the reference code's formula and "
                           "the exact binomial bound")
    bars.add_argument("--paired", action="append", default=None, metavar="A,B",
                      help="certified accuracy of run A minus run B on their common points, with a paired interval "
                           "at the --ci level (default 0.95); repeatable")
    bars.add_argument("--paired-method", choices=("bonferroni", "newcombe", "bootstrap"), default="bonferroni",
                      help="paired interval: bonferroni (guaranteed, default), newcombe or bootstrap (approximate)")
    bars.add_argument("--intersect", action="store_true",
                      help="with --paired: compare runs on different point sets over the points they share")
    add_db_argument(parser)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def parse_hp(text: str) -> tuple[float | None, float]:
    """``--hp`` as (alpha or None for the run's own, rho); InvalidArgument names a bad value."""
    parts = [t.strip() for t in str(text).split(",")]
    if len(parts) not in (1, 2) or not all(parts):
        raise InvalidArgument(f"--hp {_short(str(text))}: expected RHO or ALPHA,RHO, probabilities in (0, 1)")
    values = []
    for part in parts:
        try:
            values.append(open_probability(part))
        except argparse.ArgumentTypeError as exc:
            raise InvalidArgument(f"--hp: {_short(part)}: {exc}") from None
    return (None, values[0]) if len(values) == 1 else (values[0], values[1])


def parse_pair(text: str) -> tuple[str, str]:
    """``--paired A,B`` as two run references."""
    parts = [t.strip() for t in str(text).split(",")]
    if len(parts) != 2 or not all(parts):
        raise InvalidArgument(f"--paired {_short(str(text))}: expected two runs A,B (ids or names)")
    if parts[0] == parts[1]:
        raise InvalidArgument(f"--paired {_short(str(text))}: a run against itself differs by nothing")
    return parts[0], parts[1]


def interval_report(run: dict, df, radii: list[float], column: str, level: float, method: str, n_boot: int,
                    hp: tuple[float | None, float] | None) -> dict:
    """A run's error bars at the radii (``tradeoffs.interval_table``) as JSON-able rows."""
    from smoothviz import tradeoffs

    pair = None
    if hp is not None:
        alpha = hp[0] if hp[0] is not None else run.get("alpha")
        if alpha is None:
            raise InvalidArgument(f"--hp {hp[1]:g}: run {run['id']} records no alpha; give --hp ALPHA,RHO")
        pair = (float(alpha), hp[1])
    table = tradeoffs.interval_table(df, radii, 1 - level, method, pair, n_boot=n_boot, use=column)
    rows = [{k: (_finite(v) if isinstance(v, float) else int(v)) for k, v in row.items()}
            for row in table.to_dict("records")]
    out = {"level": level, "method": method, "pointwise": True, "rows": rows}
    if pair is not None:
        out["high_probability"] = {
            "alpha": pair[0], "rho": pair[1],
            "hp_reference": "the reference code's formula (code/analyze.py): not a valid 1 - rho bound in general",
            "hp_binomial": "exact binomial tail: valid with probability >= 1 - rho over the Monte Carlo noise",
        }
    return out


def paired_report(store: Store, pair: tuple[str, str], radii: list[float], column: str, level: float, method: str,
                  n_boot: int, intersect: bool) -> dict:
    """Run A minus run B at the radii with a paired interval (``tradeoffs.paired_difference``)."""
    from smoothviz import tradeoffs

    ids = [store.resolve_run(ref) for ref in pair]
    frames = [store.results(i) for i in ids]
    a, b = (set(df["idx"].tolist()) for df in frames)
    if not a & b:
        raise InvalidArgument(f"--paired {pair[0]},{pair[1]}: the runs share no points")
    if a != b and not intersect:
        raise InvalidArgument(f"--paired {pair[0]},{pair[1]}: the runs cover different points ({len(a - b)} only in "
                              f"run {ids[0]}, {len(b - a)} only in run {ids[1]}); add --intersect to compare the "
                              f"{len(a & b)} they share")
    diff = tradeoffs.paired_difference(frames[0], frames[1], radii, 1 - level, method, intersect=intersect,
                                       n_boot=n_boot, use=column)
    rows = [{k: (v if isinstance(v, str) else _finite(float(v)) if isinstance(v, float) else int(v))
             for k, v in row.items()} for row in diff.to_dict("records")]
    return {"a": ids[0], "b": ids[1], "level": level, "method": method, "use": column, "rows": rows}


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
    hp = parse_hp(args.hp) if args.hp is not None else None
    pairs = [parse_pair(text) for text in args.paired or ()]
    level = args.ci if args.ci is not None else 0.95
    method = args.ci_method or "clopper-pearson"
    bars = args.ci is not None or args.ci_method is not None or hp is not None
    column = "naive_radius" if args.use == "naive" else "radius"
    with Store(args.db, create=False) as store:
        reports = [run_report(store, ref, radii, args.use, args.curve) for ref in args.runs]
        if bars:
            for rep in reports:
                rep["intervals"] = interval_report(store.run(rep["run"]), store.results(rep["run"]),
                                                   [row["radius"] for row in rep["table"]], column, level, method,
                                                   args.n_boot, hp)
        paired = [paired_report(store, pair, radii, column, level, args.paired_method, args.n_boot, args.intersect)
                  for pair in pairs]
    if args.json:
        body = reports if len(reports) > 1 else reports[0]
        print(json.dumps({"runs": reports, "paired": paired} if pairs else body, indent=2))
        return 0
    if args.curve:
        for rep in reports:
            print(f"run {rep['run']} ({rep['name']}), {rep['use']}: {rep['points']} points")
            print(f"{'radius':>10}  certified accuracy")
            for row in rep["table"]:
                print(f"{row['radius']:>10.4f}  {_fmt(row['certified_accuracy'])}")
        _print_bars(reports, paired)
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
    _print_bars(reports, paired)
    _notes(reports, args.use)
    return 0


def _print_bars(reports: list[dict], paired: list[dict]) -> None:
    """Each run's intervals (and high-probability accuracy), then each paired difference."""
    for rep in reports:
        bars = rep.get("intervals")
        if bars is None:
            continue
        name = "Clopper-Pearson" if bars["method"] == "clopper-pearson" else "bootstrap (approximate)"
        print(f"run {rep['run']} ({rep['name']}): {bars['level']:.0%} {name} intervals over its "
              f"{rep['points']} test points, pointwise in the radius")
        hp = bars.get("high_probability")
        head = f"{'radius':>8}  {'certified':>9}  {'accuracy':>8}  {'low':>6}  {'high':>6}"
        if hp is not None:
            head += f"  {'hp reference*':>13}  {'hp binomial':>11}"
        print(head)
        for row in bars["rows"]:
            line = (f"{row['radius']:>8.3g}  {row['certified']:>4}/{row['points']:<4}  "
                    f"{_fmt(row['certified_accuracy']):>8}  {_fmt(row['low']):>6}  {_fmt(row['high']):>6}")
            if hp is not None:
                line += f"  {_fmt(row['hp_reference']):>13}  {_fmt(row['hp_binomial']):>11}"
            print(line)
        if hp is not None:
            print(f"  high probability at alpha {hp['alpha']:g}, rho {hp['rho']:g}: * the reference code's formula, not "
                  f"a valid bound in general; hp binomial: exact, valid with probability >= {1 - hp['rho']:g}")
    for pair in paired:
        print(f"run {pair['a']} minus run {pair['b']}: certified accuracy on {pair['rows'][0]['points']} common points, "
              f"{pair['level']:.0%} paired interval ({pair['method']}), pointwise in the radius")
        print(f"{'radius':>8}  {'a':>6}  {'b':>6}  {'a - b':>7}  {'low':>7}  {'high':>7}  {'only a':>6}  "
              f"{'only b':>6}  verdict")
        for row in pair["rows"]:
            print(f"{row['radius']:>8.3g}  {_fmt(row['accuracy_a']):>6}  {_fmt(row['accuracy_b']):>6}  "
                  f"{_fmt(row['difference'], '+.3f'):>7}  {_fmt(row['low'], '+.3f'):>7}  {_fmt(row['high'], '+.3f'):>7}  "
                  f"{row['only_a']:>6}  {row['only_b']:>6}  {_verdict(row['verdict'], pair)}")


def _verdict(verdict: str, pair: dict) -> str:
    if verdict == "a higher":
        return f"run {pair['a']} higher"
    if verdict == "b higher":
        return f"run {pair['b']} higher"
    return "undecided (the data cannot tell them apart)"


def _notes(reports: list[dict], use: str) -> None:
    """One line per run whose certificates need a word: naive only, or an audit above the run's r."""
    for rep in reports:
        if rep["certificate"] != "sound" and use != "naive":
            print(f"run {rep['run']}: {rep['certificate']}: its sigma has no semi-elasticity, so its sound radius is 0 "
                  "(--use naive shows the naive radii, which are no guarantee)")
        if rep["warning"]:
            print(f"warning: run {rep['run']}: {rep['warning']}")
