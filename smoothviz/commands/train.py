"""``smoothviz train``: noise-augmented training of a base classifier, saved as a checkpoint.

Everything is checked, and the duration estimated, before training starts: a refused command
trains nothing and writes no checkpoint (only the ``--progress-file`` the caller asked for, which
reports the failure). The checkpoint is written atomically at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from smoothviz import cost
from smoothviz.commands._args import non_negative, positive, positive_int, seed_arg
from smoothviz.data import DATASET_INFO, DEFAULT_DATASET
from smoothviz.device import DEVICE_CHOICES_HELP
from smoothviz.errors import Cancelled, InvalidArgument, SmoothvizError
from smoothviz.outputs import check_output_path

NAME = "train"
HELP = "Train a base classifier under Gaussian noise of sigma(x) (constant or knn) and save it."

DEFAULT_EPOCHS = {"digits": 30, "fashion-mnist": 10, "mnist": 10, "cifar10": 90}
DEFAULT_OUT_DIR = Path("runs/checkpoints")
# The choices of smoothviz.models.ARCHITECTURES and smoothviz.train.OPTIMIZERS / SCHEDULES /
# DEFAULT_LR, spelled out so that defining the arguments needs no torch (tests/test_train.py
# checks that they agree).
ARCH_CHOICES = ("mlp", "cnn-small", "lenet", "resnet20", "resnet110")
OPTIMIZER_CHOICES = ("sgd", "adam")
SCHEDULE_CHOICES = ("cosine", "step")
LR_HELP = "sgd 0.05, adam 0.001"
MAX_THREADS = 1024


def _threads(text: str) -> int:
    value = positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"{value} exceeds {MAX_THREADS}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default=DEFAULT_DATASET,
                        help=f"dataset name (default {DEFAULT_DATASET}; one of "
                             f"{', '.join(DATASET_INFO)}, toy2d)")
    parser.add_argument("--arch", choices=ARCH_CHOICES, default=None,
                        help="architecture (default: the dataset's default)")
    parser.add_argument("--sigma", default="constant:0.25",
                        help="sigma function: constant:S or knn:SIGMA_B,R,K[,m=M][,min=A][,max=B] "
                             "(default constant:0.25)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="epochs (default: 30 digits, 10 (fashion-)mnist, 90 cifar10, 50 toy2d)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"checkpoint path (default {DEFAULT_OUT_DIR}/DATASET-ARCH-SIGMA.pt)")
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--lr", type=positive, default=None, help=f"learning rate (default {LR_HELP})")
    parser.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, default="sgd")
    parser.add_argument("--schedule", choices=SCHEDULE_CHOICES, default="cosine",
                        help="learning-rate schedule per iteration (default cosine)")
    parser.add_argument("--momentum", type=non_negative, default=0.9)
    parser.add_argument("--weight-decay", type=non_negative, default=1e-4)
    parser.add_argument("--seed", type=seed_arg, default=0, help=f"seed from 0 to {cost.SEED_MAX}")
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
    parser.add_argument("--threads", type=_threads, default=None,
                        help="CPU threads for torch (default: torch's choice; 1 is fastest for "
                             "small models on a busy machine)")
    parser.add_argument("--data-root", default=None,
                        help="where mnist/fashion-mnist/cifar10 files live (default $SMOOTHVIZ_DATA or ./data)")
    parser.add_argument("--no-download", action="store_true", help="never try to download data")
    parser.add_argument("--no-resume", action="store_true",
                        help="start afresh even when an epoch checkpoint of the same command exists")
    parser.add_argument("--allow-long", action="store_true",
                        help="train even when the estimate exceeds a day (otherwise refused)")
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
        from smoothviz.outputs import write_output

        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.5:
            return
        self._last = now
        text = json.dumps({"done": int(done), "total": int(total), "status": status, "message": message})
        write_output(self.path, lambda fh: fh.write(text), what="--progress-file")


def _checked_out(args: argparse.Namespace, name: str, arch: str, sigma: dict) -> tuple[Path, bool]:
    """The checkpoint path, checked; and whether it is the default one (its folder may still be missing)."""
    out = args.out or _default_out(name, arch, sigma)
    if out.suffix != ".pt":
        raise InvalidArgument(f"--out {out}: a checkpoint path must end in .pt")
    default = args.out is None
    if not default or out.parent.is_dir():
        check_output_path(out, "--out")
    return out, default


def run(args: argparse.Namespace) -> int:
    progress_path = check_output_path(args.progress_file, "--progress-file") if args.progress_file else None
    pfile = _ProgressFile(progress_path)
    last = {"done": 0, "total": 0}
    pfile.write(0, 0, "running", "loading data", force=True)
    try:
        import torch

        from smoothviz.data import canonical_name, load_dataset
        from smoothviz.progress import ProgressBar
        from smoothviz.train import estimate_training, train_model, trainable_sigma

        if args.threads:
            torch.set_num_threads(args.threads)
        name = canonical_name(args.dataset)
        sigma = trainable_sigma(args.sigma)
        arch = args.arch or DATASET_INFO[name].default_arch
        epochs = args.epochs or DEFAULT_EPOCHS.get(name, 50)
        out, default_out = _checked_out(args, name, arch, sigma)
        dataset = load_dataset(name, root=args.data_root, download=not args.no_download)
        estimate = estimate_training(
            dataset, arch, args.sigma, epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
            device=args.device, schedule=args.schedule, momentum=args.momentum, weight_decay=args.weight_decay,
        )
        cost.refuse_long(estimate, "this training", args.allow_long, "--epochs")
        if default_out:
            out.parent.mkdir(parents=True, exist_ok=True)
        bar = ProgressBar(unit="batches")

        def progress(info: dict) -> None:
            last.update(done=info["done"], total=info["total"])
            if info.get("event") in ("epoch", "setup") or info["status"] == "done":
                bar.close()
                print(info["message"], file=sys.stderr, flush=True)
            else:
                bar(info)
            pfile.write(info["done"], info["total"], "running", info.get("message", ""))

        print(f"training {arch} on {name} ({cost.plural(len(dataset.train_x), 'point')}) with sigma "
              f"{args.sigma} for {cost.plural(epochs, 'epoch')} -> {out}", file=sys.stderr, flush=True)
        print(f"estimate: {estimate.text}", file=sys.stderr, flush=True)
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
