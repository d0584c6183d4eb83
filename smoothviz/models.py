"""Architectures (normalisation inside) and checkpoints that load with ``weights_only=True``.

A checkpoint is a plain dict ``{"format", "version", "meta", "state_dict"}`` holding only tensors,
dicts, lists, strings and numbers, so ``torch.load(path, weights_only=True)`` reads it and a
tampered file cannot execute code.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from smoothviz.errors import CheckpointError, InvalidArgument

ARCHITECTURES: tuple[str, ...] = ("mlp", "cnn-small", "lenet", "resnet20", "resnet110")
CHECKPOINT_FORMAT = "smoothviz-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_META = ("dataset", "arch", "input_shape", "num_classes")
_MAX_INPUT_DIM = 2**24
_MAX_CLASSES = 100_000


class Normalize(nn.Module):
    """(x - mean) / std per channel, with mean and std stored as buffers (saved in checkpoints)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], input_shape: tuple[int, ...]):
        super().__init__()
        view = (1, len(mean)) + (1,) * (len(input_shape) - 1)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(view))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(view))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _mlp(dim: int, num_classes: int, hidden: int = 64) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def _cnn_small(shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Two 3x3 convolutions, one 2x2 pooling, one hidden dense layer (for 8x8 digits)."""
    c, h, w = shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * (h // 2) * (w // 2), 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def _lenet(shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """LeNet-style CNN (two 5x5 convolutions with 2x2 pooling, 20 and 50 channels; one dense layer)."""
    c, h, w = shape
    if h < 16 or w < 16:
        raise InvalidArgument(f"arch 'lenet' needs images of at least 16x16, got {h}x{w}")
    fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(c, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(50 * fh * fw, 256), nn.ReLU(), nn.Linear(256, num_classes),
    )


class _BasicBlock(nn.Module):
    """Residual block of He et al. 2016 (CIFAR variant); 1x1 conv + BN shortcut on shape change."""

    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR (He et al. 2016, Sec. 4.2): 16/32/64 channels, n blocks per stage.

    Depth 20 and 110 are the ones the reference smoothing code of Cohen et al. 2019 trained.
    """

    def __init__(self, depth: int, in_channels: int, num_classes: int):
        super().__init__()
        if (depth - 2) % 6:
            raise InvalidArgument(f"ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        layers: list[nn.Module] = []
        inplanes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(_BasicBlock(inplanes, planes, stride if i == 0 else 1))
                inplanes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.layers(x))
        return self.fc(torch.flatten(x, 1))


def build_model(
    arch: str,
    input_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """``Sequential(Normalize(mean, std), network)`` taking inputs in [0, 1] of ``input_shape``.

    ``mean``/``std`` are per channel (one value for grey images and 2-D points); they default to
    0.5 and are restored from the checkpoint's buffers on load.
    """
    shape = tuple(int(s) for s in input_shape)
    if arch not in ARCHITECTURES:
        raise InvalidArgument(f"unknown arch {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    if num_classes < 2:
        raise InvalidArgument(f"num_classes must be >= 2, got {num_classes}")
    channels = shape[0] if len(shape) == 3 else 1
    mean = tuple(mean) if mean is not None else (0.5,) * channels
    std = tuple(std) if std is not None else (0.5,) * channels
    if len(mean) != channels or len(std) != channels:
        raise InvalidArgument(f"mean/std need {channels} values for input shape {shape}")
    if arch == "mlp":
        return nn.Sequential(Normalize(mean, std, shape), _mlp(torch.Size(shape).numel(), num_classes))
    if len(shape) != 3:
        raise InvalidArgument(f"arch {arch!r} needs image inputs [C, H, W], got shape {shape}")
    if arch == "cnn-small":
        net = _cnn_small(shape, num_classes)
    elif arch == "lenet":
        net = _lenet(shape, num_classes)
    else:
        net = CifarResNet(20 if arch == "resnet20" else 110, shape[0], num_classes)
    return nn.Sequential(Normalize(mean, std, shape), net)


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict) -> None:
    """Write weights and metadata atomically (temporary file, then rename)."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise InvalidArgument(f"checkpoint meta lacks {', '.join(missing)}")
    try:
        # A JSON round trip leaves only the plain types that weights_only loading accepts.
        plain_meta = json.loads(json.dumps(meta, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"checkpoint meta is not JSON-able: {exc}") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "meta": plain_meta, "state_dict": state,
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _first_line(exc: BaseException) -> str:
    """A short one-line reason (torch's unpickling errors span many lines of advice)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        detail = " ".join(detail.split()).split(". Please use")[0]
        return f"not a weights-only torch file ({detail or 'refused to unpickle'})"[:200]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict, validated; CheckpointError (one line) otherwise. Runs no code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: we refuse them anyway
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError,
            AttributeError, KeyError, IndexError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint: {_first_line(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a smoothviz checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    meta, state = payload.get("meta"), payload.get("state_dict")
    if not isinstance(meta, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path} is a damaged smoothviz checkpoint (meta or weights missing)")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{path} lacks metadata {', '.join(missing)}")
    if meta["arch"] not in ARCHITECTURES:
        raise CheckpointError(f"{path} has unknown arch {meta['arch']!r}")
    shape, classes = meta["input_shape"], meta["num_classes"]
    # Bounds keep a tampered header from making build_model allocate absurd layers.
    if not (isinstance(shape, list) and 1 <= len(shape) <= 3
            and all(isinstance(s, int) and s >= 1 for s in shape)
            and torch.Size(shape).numel() <= _MAX_INPUT_DIM):
        raise CheckpointError(f"{path} has an invalid input_shape {shape!r}")
    if not (isinstance(classes, int) and 2 <= classes <= _MAX_CLASSES):
        raise CheckpointError(f"{path} has an invalid num_classes {classes!r}")
    return payload


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", expected_dataset: str | None = None
) -> tuple[nn.Module, dict]:
    """(model in eval mode on ``device``, meta). CheckpointError on corrupt/foreign/mismatched files."""
    payload = read_checkpoint(path)
    meta = payload["meta"]
    if expected_dataset is not None and meta["dataset"] != expected_dataset:
        raise CheckpointError(
            f"{path} was trained on {meta['dataset']!r}, not on {expected_dataset!r}"
        )
    try:
        model = build_model(meta["arch"], meta["input_shape"], int(meta["num_classes"]))
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, InvalidArgument, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: weights do not fit arch {meta['arch']!r}: {_first_line(exc)}"
        ) from None
    return model.to(device).eval(), meta


def list_checkpoints(
    dirs: Iterable[str | Path] = ("assets", "runs/checkpoints"), dataset: str | None = None
) -> list[tuple[Path, dict]]:
    """(path, meta) for every readable ``*.pt`` checkpoint in ``dirs``, sorted by path.

    Unreadable or foreign files and resume files are skipped; ``dataset`` filters by meta.
    """
    found = []
    for d in dirs:
        directory = Path(d)
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.pt")):
            try:
                meta = read_checkpoint(path)["meta"]
            except CheckpointError:
                continue
            if dataset is None or meta["dataset"] == dataset:
                found.append((path, meta))
    return found
