"""Gaussian noise augmentation training with a constant or input-dependent sigma(x).

Each training point x gets noise N(0, sigma(x)^2 I) in pixel space (Cohen et al. 2019, Sec. 3.1
trains the base classifier under the smoothing noise; Sukenik et al. 2022, Sec. 6 do the same with
sigma(x), where a training point's own kNN distance leaves the point itself out). Training is
seeded per epoch so that a run resumed from its epoch checkpoint ends with the same weights; the
epoch checkpoint also keeps each finished epoch's loss and accuracy, which a resumed run reports
again first, so its log holds the whole history. ``estimate_training`` checks a training and
measures how long it will take before anything is trained or written.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from smoothviz import cost, speed
from smoothviz.data import DATASET_INFO, Dataset
from smoothviz.device import resolve_device
from smoothviz.errors import Cancelled, InvalidArgument, SigmaSpecError
from smoothviz.models import build_model, read_checkpoint, save_checkpoint
from smoothviz.outputs import atomic_output
from smoothviz.sigma import KNN, SigmaFunction, build_sigma, check_knn_k, parse_sigma_spec

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step")
TRAINABLE_SIGMAS = ("constant", "knn")
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3}
RESUME_FORMAT = "smoothviz-resume"
_EVAL_BATCH = 1000


def resume_path(out: str | Path) -> Path:
    """The per-epoch checkpoint kept next to ``out`` until training finishes."""
    out = Path(out)
    return out.with_name(out.name + ".resume")


def git_commit() -> str:
    """``git rev-parse HEAD`` of the source tree, or "unknown"."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    text = proc.stdout.strip()
    return text if proc.returncode == 0 and text else "unknown"


def learning_rate(base: float, schedule: str, step: int, total: int) -> float:
    """Per-iteration learning rate: cosine annealing to 0, or /10 at 50% and 75% of training."""
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))
    return base * 0.1 ** ((step >= total // 2) + (step >= (3 * total) // 4))


def add_noise(x: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """x + N(0, sigma_i^2 I) for each row i (sigma of shape [B], on x's device)."""
    noise = torch.randn(x.shape, generator=generator, device=x.device)
    return x + noise * sigma.to(x.device).view(-1, *([1] * (x.ndim - 1)))


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """Accuracy of ``model`` on (x, y); with ``sigma`` [B], on x + one draw of N(0, sigma^2 I)."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), _EVAL_BATCH):
        xb = x[i: i + _EVAL_BATCH].to(device)
        if sigma is not None:
            xb = add_noise(xb, sigma[i: i + _EVAL_BATCH], generator)
        correct += int((model(xb).argmax(dim=1) == y[i: i + _EVAL_BATCH].to(device)).sum())
    return correct / max(len(x), 1)


def _validate(dataset: Dataset, epochs: int, batch_size: int, lr: float, optimizer: str,
              schedule: str, momentum: float, weight_decay: float) -> None:
    if epochs < 1:
        raise InvalidArgument(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
    if not (lr > 0 and math.isfinite(lr)):
        raise InvalidArgument(f"lr must be a finite number > 0, got {lr}")
    if optimizer not in OPTIMIZERS:
        raise InvalidArgument(f"optimizer {optimizer!r}: choose from {', '.join(OPTIMIZERS)}")
    if schedule not in SCHEDULES:
        raise InvalidArgument(f"schedule {schedule!r}: choose from {', '.join(SCHEDULES)}")
    if not 0 <= momentum < 1:
        raise InvalidArgument(f"momentum must be in [0, 1), got {momentum}")
    if not (weight_decay >= 0 and math.isfinite(weight_decay)):
        raise InvalidArgument(f"weight_decay must be >= 0, got {weight_decay}")
    if len(dataset.train_x) == 0 or len(dataset.test_x) == 0:
        raise InvalidArgument(f"dataset {dataset.name!r} has an empty split")


def trainable_sigma(sigma_spec: str) -> dict:
    """The parsed spec of a sigma a training can draw its noise from; ddrs, which needs the trained model, is refused."""
    params = parse_sigma_spec(sigma_spec)
    if params["kind"] not in TRAINABLE_SIGMAS:
        raise SigmaSpecError(f"sigma spec {sigma_spec!r}: training takes constant or knn; {params['kind']} optimises "
                             "sigma(x) for an already trained model, so give it to certify or predict")
    return params


def epoch_message(epoch: int, epochs: int, loss: float, accuracy: float) -> str:
    """The line printed after each epoch (``plots_explore.epoch_history`` parses this format)."""
    return f"epoch {epoch}/{epochs}: loss {loss:.4f}, noisy train accuracy {accuracy:.4f}"


def _model(dataset: Dataset, arch: str, seed: int) -> nn.Module:
    """The untrained model, initialised from ``seed`` without touching the global generator."""
    info = DATASET_INFO.get(dataset.name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(arch, dataset.input_shape, dataset.num_classes,
                           mean=info.mean if info else None, std=info.std if info else None)


def estimate_training(
    dataset: Dataset,
    arch: str,
    sigma_spec: str,
    epochs: int,
    batch_size: int = 128,
    lr: float | None = None,
    optimizer: str = "sgd",
    device: str = "auto",
    schedule: str = "cosine",
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
) -> cost.Estimate:
    """Check a training like ``train_model`` would and estimate its duration; trains and writes nothing.

    Checks the arguments, that ``arch`` takes the dataset's inputs, the sigma spec (k <= training
    points, without computing distances), the device, and that a batch with its gradients fits in
    free memory; then times a few optimisation steps of a fresh copy of the model on random data.
    """
    lr = float(DEFAULT_LR.get(optimizer, 1e-3) if lr is None else lr)
    _validate(dataset, epochs, batch_size, lr, optimizer, schedule, momentum, weight_decay)
    params = trainable_sigma(sigma_spec)
    if params["kind"] == "knn":
        check_knn_k(params["k"], len(dataset.train_x), sigma_spec, leave_one_out=True)
    dev = resolve_device(device)
    n = len(dataset.train_x)
    batch = min(int(batch_size), n)
    model = _model(dataset, arch, 0).to(dev)
    probe = speed.measure_memory_per_sample(model, tuple(dataset.input_shape), dev)
    # training keeps every activation for the backward pass and one gradient of each: twice inference
    cost.check_memory(dataset.input_shape, batch, dev, 2 * probe.bytes_per_sample)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    generator = torch.Generator(device=dev).manual_seed(0)
    x = torch.rand((batch, *dataset.input_shape), generator=generator, device=dev)
    y = torch.randint(0, dataset.num_classes, (batch,), generator=generator, device=dev)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    rate = cost.measure_train_rate(step)
    return cost.estimate_train(int(epochs), math.ceil(n / batch_size), batch, rate)


def _load_resume(path: Path, config: dict) -> dict | None:
    """The resume state when it belongs to the same configuration, else None."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an unreadable resume file is discarded, training starts afresh
        return None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT \
            or state.get("config") != config:
        return None
    return state


def _save_resume(path: Path, config: dict, epoch: int, model: nn.Module,
                 opt: torch.optim.Optimizer, seconds: float, history: list[list[float]]) -> None:
    """The state after ``epoch``, with ``history``: [loss, noisy train accuracy] of every finished epoch."""
    with atomic_output(path, "wb", what="resume file") as fh:
        torch.save({
            "format": RESUME_FORMAT, "config": config, "epoch": epoch, "seconds": seconds,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(), "history": history,
        }, fh)


def _finished_meta(out: Path, config: dict) -> dict | None:
    """Meta of an existing checkpoint at ``out`` trained with exactly this configuration."""
    if not out.is_file():
        return None
    try:
        meta = read_checkpoint(out)["meta"]
    except Exception:  # anything unreadable is simply retrained and overwritten
        return None
    return meta if meta.get("train_args") == config else None


def train_model(
    dataset: Dataset,
    arch: str,
    sigma_spec: str,
    epochs: int,
    out: str | Path,
    batch_size: int = 128,
    lr: float | None = None,
    optimizer: str = "sgd",
    seed: int = 0,
    device: str = "auto",
    progress: Callable[[dict], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    resume: bool = True,
    schedule: str = "cosine",
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
) -> dict:
    """Train ``arch`` on ``dataset`` under Gaussian noise of sigma(x); save to ``out``; return meta.

    After each epoch the state goes to ``resume_path(out)``; calling again with the same arguments
    continues from there (and returns at once when ``out`` already holds this exact training).
    ``progress`` receives dicts with done/total batches, epoch, loss, rate, eta and a message;
    after each epoch one with ``event`` "epoch" whose message is ``epoch_message``; a resumed
    training first reports the epochs finished before (``replayed`` true), in the same form.
    ``cancel`` is polled between batches and raises Cancelled (the last epoch stays resumable).
    A loss that turns NaN or infinite stops the training (InvalidArgument) before that epoch is
    saved.
    """
    out = Path(out)
    lr = float(DEFAULT_LR.get(optimizer, 1e-3) if lr is None else lr)
    _validate(dataset, epochs, batch_size, lr, optimizer, schedule, momentum, weight_decay)
    trainable_sigma(sigma_spec)
    config = {
        "dataset": dataset.name, "arch": arch, "sigma": sigma_spec, "epochs": int(epochs),
        "batch_size": int(batch_size), "lr": lr, "optimizer": optimizer, "schedule": schedule,
        "momentum": float(momentum), "weight_decay": float(weight_decay), "seed": int(seed),
        "num_train": int(len(dataset.train_x)),
    }
    report = progress or (lambda info: None)
    n = len(dataset.train_x)
    per_epoch = math.ceil(n / batch_size)
    total = per_epoch * epochs
    if resume:
        done_meta = _finished_meta(out, config)
        if done_meta is not None:
            report({"done": total, "total": total, "status": "done", "epoch": epochs,
                    "epochs": epochs, "message": f"{out} already holds this training"})
            return done_meta
    dev = resolve_device(device)
    model = _model(dataset, arch, seed).to(dev)
    if sigma_spec.strip().lower().startswith("knn"):
        report({"done": 0, "total": total, "status": "running", "event": "setup",
                "message": f"computing kNN distances among the {cost.plural(n, 'training point')}"})
    sigma_fn: SigmaFunction = build_sigma(sigma_spec, dataset.train_x, device=dev)
    train_x, train_y = dataset.train_x.to(dev), dataset.train_y.to(dev)
    if isinstance(sigma_fn, KNN):
        train_sigma = sigma_fn.training_sigma().to(dev)
    else:
        train_sigma = sigma_fn(train_x)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

    rpath = resume_path(out)
    start_epoch, seconds = 0, 0.0
    history: list[list[float]] = []
    state = _load_resume(rpath, config) if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, seconds = int(state["epoch"]), float(state["seconds"])
        history = [[float(loss), float(acc)] for loss, acc in state.get("history", [])]
        for e, (loss, acc) in enumerate(history, start=1):
            report({"done": e * per_epoch, "total": total, "status": "running", "epoch": e, "epochs": epochs,
                    "event": "epoch", "replayed": True, "message": epoch_message(e, epochs, loss, acc)})

    loss_fn = nn.CrossEntropyLoss()
    t_start = time.monotonic()
    done_at_start = start_epoch * per_epoch
    for epoch in range(start_epoch, epochs):
        model.train()
        epoch_t0 = time.monotonic()
        order_gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        noise_gen = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + epoch + 7_919)
        order = torch.randperm(n, generator=order_gen).to(dev)
        loss_sum, correct = 0.0, 0
        for b in range(per_epoch):
            if cancel is not None and cancel():
                raise Cancelled(f"training cancelled in epoch {epoch + 1}; rerun to resume "
                                f"from epoch {epoch}")
            step = epoch * per_epoch + b
            for group in opt.param_groups:
                group["lr"] = learning_rate(lr, schedule, step, total)
            idx = order[b * batch_size: (b + 1) * batch_size]
            xb, yb = train_x[idx], train_y[idx]
            logits = model(add_noise(xb, train_sigma[idx], noise_gen))
            loss = loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(dim=1) == yb).sum())
            done = step + 1
            elapsed = time.monotonic() - t_start
            rate = (done - done_at_start) / elapsed if elapsed > 0 else None
            report({
                "done": done, "total": total, "status": "running", "epoch": epoch + 1,
                "epochs": epochs, "loss": loss_sum / min((b + 1) * batch_size, n),
                "rate": rate, "eta": (total - done) / rate if rate else None,
                "message": f"epoch {epoch + 1}/{epochs}",
            })
        seconds += time.monotonic() - epoch_t0
        if not math.isfinite(loss_sum):
            raise InvalidArgument(f"training diverged in epoch {epoch + 1}: the loss is {loss_sum / n}; "
                                  "lower the learning rate (--lr)")
        history.append([loss_sum / n, correct / n])
        report({"done": (epoch + 1) * per_epoch, "total": total, "status": "running",
                "epoch": epoch + 1, "epochs": epochs, "event": "epoch",
                "message": epoch_message(epoch + 1, epochs, loss_sum / n, correct / n)})
        _save_resume(rpath, config, epoch + 1, model, opt, seconds, history)

    eval_gen = torch.Generator(device=dev).manual_seed(seed + 20_231)
    test_sigma = sigma_fn(dataset.test_x.to(dev))
    clean = evaluate(model, dataset.test_x, dataset.test_y)
    noisy = evaluate(model, dataset.test_x, dataset.test_y, test_sigma, eval_gen)
    meta = {
        "dataset": dataset.name, "arch": arch, "input_shape": list(dataset.input_shape),
        "num_classes": dataset.num_classes, "class_names": list(dataset.class_names),
        "sigma": sigma_fn.spec, "sigma_params": sigma_fn.params(), "r": float(sigma_fn.r),
        "epochs": int(epochs), "clean_accuracy": clean, "noisy_accuracy": noisy,
        "test_sigma_min": float(test_sigma.min()), "test_sigma_max": float(test_sigma.max()),
        "train_args": config, "git_commit": git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train_seconds": round(seconds, 2), "device": str(dev), "torch_version": str(torch.__version__),
    }
    save_checkpoint(out, model.cpu(), meta)
    rpath.unlink(missing_ok=True)
    report({"done": total, "total": total, "status": "done", "epoch": epochs, "epochs": epochs,
            "message": f"clean accuracy {clean:.4f}, noisy accuracy {noisy:.4f} -> {out}"})
    return meta
