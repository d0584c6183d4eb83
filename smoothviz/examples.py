"""Example runs shipped with the repository, so that a fresh results store has something to show.

``assets/examples/examples-v1.json`` holds finished certifications made with the command line on
the shipped checkpoints (their commands are in assets/README.md): each run's configuration, its
per-point rows (label, prediction, counts, sigma, the p_A bound, the sound and naive radii,
seconds) and the certified-accuracy table computed when it was exported. ``load_examples`` copies
them into a store as runs of kind ``example``, once: loading again adds nothing.

Regenerate the file from a store holding the runs with
``python -m smoothviz.examples --db STORE --out assets/examples/examples-v1.json RUN_ID...``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from smoothviz import analysis
from smoothviz.errors import InvalidArgument, SmoothvizError, StoreError
from smoothviz.store import Store

FORMAT = "smoothviz-examples"
VERSION = 1
KIND = "example"
EXAMPLES_FILE = Path(__file__).resolve().parents[1] / "assets" / "examples" / f"examples-v{VERSION}.json"
COLUMNS = ("idx", "label", "predict", "correct", "p_a_lower", "sigma", "radius", "naive_radius", "seconds",
           "counts")
# What identifies a run's configuration; the rest of a store row (status, pid, times) is not shipped.
CONFIG_KEYS = ("name", "dataset", "split", "checkpoint", "checkpoint_sha256", "sigma_spec", "sigma_params", "r",
               "n0", "n", "alpha", "device", "indices", "seed", "batch_size", "options")
_LOCK = threading.Lock()


def _key(run: dict) -> str:
    """The example's stable name: its checkpoint's file name without the suffix (else the run name)."""
    return Path(run["checkpoint"]).stem if run.get("checkpoint") else str(run["name"])


def _number(value: object) -> object:
    """JSON has no NaN: a missing float becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def export_examples(store: Store, run_ids: Sequence[int], path: str | Path) -> dict:
    """Write finished runs of ``store`` as the examples file at ``path``; returns what was written."""
    runs = []
    for run_id in run_ids:
        run = store.run(int(run_id))
        if run["status"] != "done" or run["done"] != run["total"]:
            raise InvalidArgument(f"run {run_id} is {run['status']} with {run['done']} of {run['total']} points; "
                                  "only finished runs can be examples")
        results = store.results(int(run_id))
        table = analysis.accuracy_table(results, analysis.DEFAULT_RADII)
        rows = [[_number(row[c].item() if hasattr(row[c], "item") else row[c]) for c in COLUMNS]
                for _, row in results.iterrows()]
        runs.append({
            "key": _key(run),
            "config": {k: run[k] for k in CONFIG_KEYS},
            "seconds": float(run["seconds"]),
            "table": {"radii": [float(r) for r in table["radius"]],
                      "certified_accuracy": [float(a) for a in table["certified_accuracy"]]},
            "columns": list(COLUMNS),
            "rows": rows,
        })
    keys = [r["key"] for r in runs]
    if len(set(keys)) != len(keys):
        raise InvalidArgument(f"two runs share an example name: {keys}")
    payload = {"format": FORMAT, "version": VERSION, "runs": runs}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(payload, separators=(",", ":"), allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(out)
    return payload


def read_examples(path: str | Path = EXAMPLES_FILE) -> list[dict]:
    """The runs of an examples file, checked; StoreError (one line) when it is missing or not one."""
    where = Path(path)
    try:
        payload = json.loads(where.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StoreError(f"examples file {where.name}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise StoreError(f"examples file {where.name}: not JSON ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("version") != VERSION:
        raise StoreError(f"examples file {where.name}: not a {FORMAT} file of version {VERSION}")
    runs = payload.get("runs")
    if not isinstance(runs, list) or not runs:
        raise StoreError(f"examples file {where.name}: holds no runs")
    for run in runs:
        if not isinstance(run, dict) or run.get("columns") != list(COLUMNS) or not isinstance(run.get("rows"), list) \
                or set(run.get("config", {})) != set(CONFIG_KEYS):
            raise StoreError(f"examples file {where.name}: run {run.get('key') if isinstance(run, dict) else run!r} "
                             "is malformed")
    return runs


def _example_rows(store: Store) -> list[tuple[str, int, bool]]:
    """(example name, run id, complete) of every example run in ``store``, oldest first."""
    runs = store.runs()
    out = []
    for run_id in sorted(int(i) for i in runs.loc[runs["kind"] == KIND, "id"]) if len(runs) else ():
        run = store.run(run_id)
        key = (run.get("options") or {}).get("example")
        if key:
            out.append((str(key), run_id, run["status"] == "done" and run["done"] == run["total"]))
    return out


def example_runs(store: Store) -> dict[str, int]:
    """The complete example runs in ``store``: example name -> run id."""
    found: dict[str, int] = {}
    for key, run_id, complete in _example_rows(store):
        if complete:
            found.setdefault(key, run_id)
    return found


def load_examples(store: Store, path: str | Path = EXAMPLES_FILE) -> list[int]:
    """Copy the example runs into ``store`` (kind ``example``) and return their ids, in file order.

    Idempotent: an example already in the store is not added again (its id is returned); one
    left incomplete by an interrupted load is replaced.
    """
    runs = read_examples(path)
    with _LOCK:
        for _name, run_id, complete in _example_rows(store):
            if not complete:
                store.delete_run(run_id)
        present = example_runs(store)
        return [present[example["key"]] if example["key"] in present else _add(store, example)
                for example in runs]


def _add(store: Store, example: dict) -> int:
    config = dict(example["config"])
    options = dict(config.pop("options") or {}, example=example["key"], example_version=VERSION)
    run_id = store.create_run(**config, options=options, kind=KIND)
    try:
        for row in example["rows"]:
            point = dict(zip(COLUMNS, row))
            point["correct"] = bool(point["correct"])
            store.add_result(run_id, point)
    except (KeyError, TypeError, ValueError) as exc:
        store.delete_run(run_id)
        raise StoreError(f"example {example['key']}: a malformed row ({exc})") from None
    store.set_status(run_id, "done", "example run shipped with smoothviz (assets/examples)")
    return run_id


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m smoothviz.examples --db STORE --out FILE RUN_ID...``: export finished runs as examples."""
    parser = argparse.ArgumentParser(prog="python -m smoothviz.examples", description=main.__doc__)
    parser.add_argument("--db", type=Path, required=True, help="the store holding the finished runs")
    parser.add_argument("--out", type=Path, default=EXAMPLES_FILE, help="the examples file to write")
    parser.add_argument("runs", nargs="+", type=int, help="run ids, in the order the examples are listed")
    args = parser.parse_args(argv)
    try:
        store = Store(args.db, create=False)
        payload = export_examples(store, args.runs, args.out)
    except SmoothvizError as exc:
        print(f"smoothviz.examples: error: {exc}", file=sys.stderr)
        return 2
    size = args.out.stat().st_size
    print(f"wrote {len(payload['runs'])} example runs to {args.out} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
