"""``smoothviz train``: noise-augmented training of a base classifier, saved as a checkpoint."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from smoothviz.commands._args import non_negative, positive, positive_int
from smoothviz.data import DATASET_INFO, DEFAULT_DATASET, canonical_name, load_dataset
from smoothviz.errors import Cancelled, InvalidArgument, SmoothvizError
from smoothviz.models import ARCHITECTURES
from smoothviz.progress import ProgressBar
from smoothviz.sigma import parse_sigma_spec
from smoothviz.train import DEFAULT_LR, OPTIMIZERS, SCHEDULES, train_model

NAME = "train"
HELP = "Train a base classifier under Gaussian noise of sigma(x) (constant or knn) and save it."

DEFAULT_EPOCHS = {"digits": 30, "fashion-mnist": 10, "mnist": 10, "cifar10": 90}
DEFAULT_OUT_DIR = Path("runs/checkpoints")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default=DEFAULT_DATASET,
                        help=f"dataset name (default {DEFAULT_DATASET}; one of "
                             f"{', '.join(DATASET_INFO)}, toy2d)")
    parser.add_argument("--arch", choices=ARCHITECTURES, default=None,
                        help="architecture (default: the dataset's default)")
    parser.add_argument("--sigma", default="constant:0.25",
                        help="sigma function: constant:S or knn:SIGMA_B,R,K[,m=M][,min=A][,max=B] "
                             "(default constant:0.25)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="epochs (default: 30 digits, 10 (fashion-)mnist, 90 cifar10, 50 toy2d)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"checkpoint path (default {DEFAULT_OUT_DIR}/DATASET-ARCH-SIGMA.pt)")
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--lr", type=positive, default=None,
                        help=f"learning rate (default sgd {DEFAULT_LR['sgd']}, adam {DEFAULT_LR['adam']})")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    parser.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                        help="learning-rate schedule per iteration (default cosine)")
    parser.add_argument("--momentum", type=non_negative, default=0.9)
    parser.add_argument("--weight-decay", type=non_negative, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for torch (default: torch's choice; 1 is fastest for "
                             "small models on a busy machine)")
    parser.add_argument("--data-root", default=None,
                        help="where mnist/fashion-mnist/cifar10 files live (default $SMOOTHVIZ_DATA or ./data)")
    parser.add_argument("--no-download", action="store_true", help="never try to download data")
    parser.add_argument("--no-resume", action="store_true",
                        help="start afresh even when an epoch checkpoint of the same command exists")
    parser.add_argument("--progress-file", type=Path, default=None,
                        help="JSON file rewritten atomically with {done,total,status,message}")


def _default_out(dataset: str, arch: str, sigma: dict) -> Path:
    value = sigma["sigma"] if sigma["kind"] == "constant" else sigma["sigma_b"]
    return DEFAULT_OUT_DIR / f"{dataset}-{arch}-{sigma['kind']}-{value:g}.pt"


class _ProgressFile:
    """Writes {done, total, status, message} to a JSON file atomically, at most every 0.5 s."""

    def __init__(self, path: Path | None):
        self.path = path
        self._last = 0.0

    def write(self, done: int, total: int, status: str, message: str, force: bool = False) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.5:
            return
        self._last = now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"done": int(done), "total": int(total), "status": status,
                                   "message": message}))
        os.replace(tmp, self.path)


def run(args: argparse.Namespace) -> int:
    pfile = _ProgressFile(args.progress_file)
    last = {"done": 0, "total": 0}
    pfile.write(0, 0, "running", "loading data", force=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        name = canonical_name(args.dataset)
        sigma = parse_sigma_spec(args.sigma)
        arch = args.arch or DATASET_INFO[name].default_arch
        epochs = args.epochs or DEFAULT_EPOCHS.get(name, 50)
        out = args.out or _default_out(name, arch, sigma)
        if out.suffix != ".pt":
            raise InvalidArgument(f"--out {out}: a checkpoint path must end in .pt")
        dataset = load_dataset(name, root=args.data_root, download=not args.no_download)
        bar = ProgressBar(unit="batches")

        def progress(info: dict) -> None:
            last.update(done=info["done"], total=info["total"])
            if info.get("event") in ("epoch", "setup") or info["status"] == "done":
                bar.close()
                print(info["message"], file=sys.stderr, flush=True)
            else:
                bar(info)
            pfile.write(info["done"], info["total"], "running", info.get("message", ""))

        print(f"training {arch} on {name} ({len(dataset.train_x)} points) with sigma "
              f"{args.sigma} for {epochs} epochs -> {out}", file=sys.stderr, flush=True)
        meta = train_model(
            dataset, arch, args.sigma, epochs, out, batch_size=args.batch_size, lr=args.lr,
            optimizer=args.optimizer, seed=args.seed, device=args.device, progress=progress,
            resume=not args.no_resume, schedule=args.schedule, momentum=args.momentum,
            weight_decay=args.weight_decay,
        )
    except Cancelled as exc:
        pfile.write(last["done"], last["total"], "cancelled", str(exc), force=True)
        raise
    except KeyboardInterrupt:
        pfile.write(last["done"], last["total"], "cancelled", "interrupted", force=True)
        raise
    except SmoothvizError as exc:
        pfile.write(last["done"], last["total"], "failed", str(exc), force=True)
        raise
    except Exception as exc:
        pfile.write(last["done"], last["total"], "failed", f"{type(exc).__name__}: {exc}", force=True)
        raise
    summary = (f"clean accuracy {meta['clean_accuracy']:.4f}, noisy accuracy "
               f"{meta['noisy_accuracy']:.4f} (sigma {meta['sigma']}) -> {out}")
    pfile.write(last["total"], last["total"], "done", summary, force=True)
    print(json.dumps({k: meta[k] for k in ("dataset", "arch", "sigma", "r", "epochs",
                                           "clean_accuracy", "noisy_accuracy", "train_seconds")}))
    return 0
