"""``smoothviz bench-distributed``: one certification's throughput on 1..K ranks, and its scaling.

Each configuration is a real certification of the same points with the same seed (``certify``
into a scratch store, ``--processes K`` for K > 1). Its time is the store's, from the moment the
run starts executing (every rank has prepared and checked it) to its end, so start-up and
preparation are left out of the rates. On a CPU the ranks share the machine's cores: K ranks
with cores/K threads each against one rank with every core, and the efficiency is
rate_K / rate_1 (1.0: spreading the work over ranks costs nothing). With a GPU per rank the
efficiency is rate_K / (K * rate_1). The counts of every configuration are compared with the
one-rank run's: a distributed run must store exactly the same.

Only the standard library is imported here; the measurement runs the CLI in subprocesses.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from smoothviz.commands._args import positive_int
from smoothviz.device import DEVICE_CHOICES_HELP
from smoothviz.errors import InvalidArgument
from smoothviz.outputs import check_output_path, write_output

NAME = "bench-distributed"
HELP = "Scale one certification over 1..K ranks (torchrun): points/s and scaling efficiency on the same inputs."

DEFAULT_MODEL = Path("assets/digits-cnn-constant-0.25.pt")
MAX_POINTS = 10_000
MAX_N = 10_000_000
MAX_REPEATS = 20
RANKS_MAX = 1024
RUN_TIMEOUT_S = 3600  # one configuration's certification


def ranks_list(text: str) -> list[int]:
    """Rank counts such as ``1,2,4``: integers from 1 to RANKS_MAX, 1 among them (the reference)."""
    try:
        values = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers such as 1,2,4") from None
    if not values or values[0] < 1 or values[-1] > RANKS_MAX:
        raise argparse.ArgumentTypeError(f"{text!r}: rank counts go from 1 to {RANKS_MAX}")
    if values[0] != 1:
        raise argparse.ArgumentTypeError(f"{text!r}: include 1, the run the others are compared with")
    return values


def _at_most(limit: int):
    def parse(text: str) -> int:
        value = positive_int(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"{value} exceeds {limit:,}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"checkpoint (default {DEFAULT_MODEL})")
    parser.add_argument("--sigma", default=None, help="sigma function (default: the checkpoint's)")
    parser.add_argument("--points", type=_at_most(MAX_POINTS), default=64, help="test points (default 64)")
    parser.add_argument("--n0", type=_at_most(MAX_N), default=20, help="selection samples per point (default 20)")
    parser.add_argument("--n", type=_at_most(MAX_N), default=2000, help="estimation samples per point (default 2000)")
    parser.add_argument("--processes", type=ranks_list, default=None, metavar="1,K,...",
                        help="rank counts to measure (default: 1 and every GPU, or 1 and every core on a CPU)")
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
    parser.add_argument("--batch-size", type=positive_int, default=None, help="noisy samples per forward pass")
    parser.add_argument("--repeats", type=_at_most(MAX_REPEATS), default=1,
                        help="measurements per configuration; the fastest counts (default 1)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")


@dataclass(frozen=True)
class Measurement:
    """One configuration: ``ranks`` processes of ``threads`` threads took ``seconds`` for ``points``."""

    ranks: int
    threads: int
    points: int
    seconds: float
    identical: bool | None  # counts equal to the one-rank run's (None for that run itself)

    @property
    def rate(self) -> float:
        return self.points / self.seconds


def efficiency(rate: float, reference: float, ranks: int, one_device_per_rank: bool) -> float:
    """Scaling efficiency: rate against the one-rank rate times the devices the ranks add."""
    return rate / (reference * (ranks if one_device_per_rank else 1))


def format_table(rows: list[Measurement], one_device_per_rank: bool) -> str:
    """The measurements as a table, with the efficiency's definition."""
    reference = rows[0].rate
    lines = [f"{'ranks':>5}  {'threads/rank':>12}  {'seconds':>8}  {'points/s':>9}  {'efficiency':>10}  counts"]
    for m in rows:
        same = "reference" if m.identical is None else ("identical" if m.identical else "DIFFERENT")
        lines.append(f"{m.ranks:>5}  {m.threads:>12}  {m.seconds:>8.3f}  {m.rate:>9.4g}  "
                     f"{efficiency(m.rate, reference, m.ranks, one_device_per_rank):>10.2f}  {same}")
    lines.append("efficiency: points/s on K ranks / (points/s on 1 rank" +
                 (" x K): one GPU per rank" if one_device_per_rank else "): the ranks share this CPU's cores"))
    return "\n".join(lines)


def _measure(args: argparse.Namespace, ranks: int, threads: int, device: str, db: Path) -> tuple[float, list]:
    """(seconds of execution, [(idx, counts)]) of one certification on ``ranks`` ranks."""
    from smoothviz.store import Store

    argv = [sys.executable, "-m", "smoothviz", "certify", "--model", str(args.model), "--points", str(args.points),
            "--n0", str(args.n0), "--n", str(args.n), "--seed", "0", "--device", device, "--db", str(db), "--quiet",
            "--new"]
    argv += ["--sigma", args.sigma] if args.sigma else []
    argv += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    argv += ["--processes", str(ranks)] if ranks > 1 else []
    env = {k: v for k, v in os.environ.items() if k != "SMOOTHVIZ_DB"}
    env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise InvalidArgument(f"{ranks} ranks: certify failed: {last}")
    with Store(db, create=False) as store:
        run_id = int(store.runs()["id"].max())
        run, df = store.run(run_id), store.results(run_id)
    counts = sorted((int(i), list(c)) for i, c in zip(df["idx"], df["counts"]))
    return float(run["finished"] - run["started"]), counts


def run(args: argparse.Namespace) -> int:
    from smoothviz import bench
    from smoothviz.device import resolve_device

    out = check_output_path(args.json) if args.json is not None else None
    if not args.model.is_file():
        raise InvalidArgument(f"--model {args.model}: no such checkpoint")
    dev = resolve_device(args.device)
    cuda = dev.type == "cuda"
    cores = os.cpu_count() or 1
    if cuda:
        import torch

        available = torch.cuda.device_count()
    else:
        available = cores
    counts = args.processes or sorted({1, available})
    if counts[-1] > available:
        raise InvalidArgument(f"--processes {counts[-1]}: this machine has {available} "
                              f"{'GPUs' if cuda else 'cores'}")
    info = bench.machine_info(dev)
    where = info.get("gpu") or info.get("processor") or "cpu"
    print(f"bench-distributed: {dev.type} ({where}; {cores} cores), torch {info['torch']}, {args.model.name}, "
          f"{args.points} points x {args.n0 + args.n:,} samples, best of {args.repeats}", file=sys.stderr)
    rows: list[Measurement] = []
    reference = None
    with tempfile.TemporaryDirectory(prefix="smoothviz-bench-") as tmp:
        for k in counts:
            threads = 1 if cuda else max(1, cores // k)
            best, same = None, True
            for repeat in range(args.repeats):
                seconds, got = _measure(args, k, threads, "cuda" if cuda else "cpu", Path(tmp) / f"{k}-{repeat}.db")
                reference = got if reference is None else reference
                best = seconds if best is None else min(best, seconds)
                same = same and got == reference
            rows.append(Measurement(k, threads, args.points, best, None if k == 1 and same else same))
            print(f"  {k} rank{'s' if k > 1 else ''}: {best:.3f} s", file=sys.stderr)
    print(format_table(rows, cuda))
    if out is not None:
        record = {"machine": info, "model": str(args.model), "points": args.points, "n0": args.n0, "n": args.n,
                  "rows": [{**asdict(m), "rate": m.rate} for m in rows]}
        write_output(out, lambda f: f.write(json.dumps(record, indent=1) + "\n"))
    return 0 if all(m.identical in (None, True) for m in rows) else 1
