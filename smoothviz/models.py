"""Architectures (normalisation inside) and checkpoints that load with ``weights_only=True``.

A checkpoint is a plain dict ``{"format", "version", "meta", "state_dict"}`` holding only tensors,
dicts, lists, strings and numbers, so ``torch.load(path, weights_only=True)`` reads it and a
tampered file cannot execute code.

Nothing is built from a checkpoint before it is known to fit: the header (dataset, input shape,
classes) is compared with the dataset's, the architecture is laid out on the ``meta`` device (no
memory) and its tensor shapes compared with the stored weights, and the weights must be finite.
``check_compatible`` then runs the built model on a probe batch: one output per class, all finite.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from smoothviz.cost import MAX_CHECKPOINT_BYTES, MAX_INPUT_ELEMENTS, bytes_text
from smoothviz.data import DATASET_INFO
from smoothviz.errors import CheckpointError, InvalidArgument
from smoothviz.outputs import atomic_output

ARCHITECTURES: tuple[str, ...] = ("mlp", "cnn-small", "lenet", "resnet20", "resnet110")
CHECKPOINT_FORMAT = "smoothviz-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_META = ("dataset", "arch", "input_shape", "num_classes")
_MAX_CLASSES = 100_000
_PROBE_POINTS = 4


class DatasetShape(Protocol):
    """What a checkpoint must agree with: ``data.DatasetInfo`` and ``data.Dataset`` both have it."""

    name: str
    input_shape: tuple[int, ...]

    @property
    def num_classes(self) -> int: ...


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
    """Write weights and metadata atomically (a temporary file beside ``path``, then a rename).

    Missing parent folders are created; a target that cannot be written (a directory, a device,
    a full disk) is one InvalidArgument line and leaves any previous file in place.
    """
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise InvalidArgument(f"checkpoint meta lacks {', '.join(missing)}")
    try:
        # A JSON round trip leaves only the plain types that weights_only loading accepts.
        plain_meta = json.loads(json.dumps(meta, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"checkpoint meta is not JSON-able: {exc}") from None
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgument(f"checkpoint {path}: cannot create folder {path.parent} ({exc.strerror})") from None
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "meta": plain_meta, "state_dict": state,
    }
    with atomic_output(path, "wb", what="checkpoint") as fh:
        torch.save(payload, fh)


def _first_line(exc: BaseException) -> str:
    """A short one-line reason (torch's unpickling errors span many lines of advice)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        detail = " ".join(detail.split()).split(". Please use")[0]
        return f"not a weights-only torch file ({detail or 'refused to unpickle'})"[:200]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def check_model_file(path: Path, what: str) -> None:
    """CheckpointError (one line naming ``what``) unless ``path`` is a regular file of at most
    MAX_CHECKPOINT_BYTES, checked before anything reads it."""
    if not path.exists():
        raise CheckpointError(f"{what} {path} not found")
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "a device or special file"
        raise CheckpointError(f"{what} {path} is {kind}, not a {what} file")
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{what} {path} is {bytes_text(size)}, more than the "
                              f"{bytes_text(MAX_CHECKPOINT_BYTES)} a model file may have")


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict, validated; CheckpointError (one line) otherwise. Runs no code.

    The header must name a known architecture, at most MAX_INPUT_ELEMENTS values per input and
    2 to 100,000 classes, so a tampered header cannot make anything allocate absurd layers.
    """
    path = Path(path)
    check_model_file(path, "checkpoint")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: we refuse them anyway
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any bytes may arrive here (struct.error for 4 bytes of junk, ...)
        raise CheckpointError(f"{path} is not a readable checkpoint: {_first_line(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a smoothviz checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    meta, state = payload.get("meta"), payload.get("state_dict")
    if not isinstance(meta, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path} is a damaged smoothviz checkpoint (meta or weights missing)")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{path} lacks metadata {', '.join(missing)}")
    if not isinstance(meta["dataset"], str):
        raise CheckpointError(f"{path} has an invalid dataset {meta['dataset']!r}")
    if meta["arch"] not in ARCHITECTURES:
        raise CheckpointError(f"{path} has unknown arch {meta['arch']!r}")
    shape, classes = meta["input_shape"], meta["num_classes"]
    if not (isinstance(shape, list) and 1 <= len(shape) <= 3
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)):
        raise CheckpointError(f"{path} has an invalid input_shape {shape!r}")
    values = math.prod(shape)
    if values > MAX_INPUT_ELEMENTS:
        raise CheckpointError(f"{path} has an invalid input_shape {shape}: {values:,} values per input, "
                              f"more than the {MAX_INPUT_ELEMENTS:,} allowed")
    if not (isinstance(classes, int) and not isinstance(classes, bool) and 2 <= classes <= _MAX_CLASSES):
        raise CheckpointError(f"{path} has an invalid num_classes {classes!r}")
    return payload


def check_header(meta: dict, dataset: DatasetShape, source: str | Path = "checkpoint") -> None:
    """The checkpoint's dataset, input shape and number of classes agree with ``dataset``.

    Compares the header alone, before anything is built; CheckpointError names what differs.
    """
    if meta["dataset"] != dataset.name:
        raise CheckpointError(f"{source} was trained on {meta['dataset']!r}, not on {dataset.name!r}")
    if [int(s) for s in meta["input_shape"]] != [int(s) for s in dataset.input_shape]:
        raise CheckpointError(f"{source} declares input shape {list(meta['input_shape'])}, but {dataset.name} "
                              f"inputs have shape {list(dataset.input_shape)}")
    if int(meta["num_classes"]) != int(dataset.num_classes):
        raise CheckpointError(f"{source} declares {meta['num_classes']} classes, but {dataset.name} has "
                              f"{dataset.num_classes}")


def _skeleton(meta: dict, source: str | Path) -> nn.Module:
    """The checkpoint's architecture on the ``meta`` device: shapes only, no memory, no init cost."""
    try:
        with torch.device("meta"):
            return build_model(meta["arch"], meta["input_shape"], int(meta["num_classes"]))
    except InvalidArgument as exc:
        raise CheckpointError(f"{source}: arch {meta['arch']!r} cannot take input {meta['input_shape']}: {exc}") from None


def check_weights(payload: dict, source: str | Path = "checkpoint") -> None:
    """The stored weights have exactly the names, shapes and dtypes of the declared architecture,
    and every floating-point value is finite; CheckpointError otherwise. Builds nothing real."""
    meta, state = payload["meta"], payload["state_dict"]
    expected = _skeleton(meta, source).state_dict()
    fits = f"{source}: weights do not fit arch {meta['arch']!r} for input {list(meta['input_shape'])} " \
           f"and {meta['num_classes']} classes"
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        detail = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(map(str, unexpected[:3]))}"
        raise CheckpointError(f"{fits}: {detail}")
    for name, want in expected.items():
        got = state[name]
        if not isinstance(got, torch.Tensor):
            raise CheckpointError(f"{fits}: {name} is not a tensor")
        if got.shape != want.shape or got.dtype != want.dtype:
            raise CheckpointError(f"{fits}: {name} has shape {list(got.shape)} ({got.dtype}), "
                                  f"expected {list(want.shape)} ({want.dtype})")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(f"{source}: weights hold NaN or infinite values ({', '.join(bad[:3])}{more})")


def check_outputs(model: nn.Module, input_shape: Sequence[int], num_classes: int, source: str | Path,
                  data_name: str) -> None:
    """A built model's parameters and buffers are finite and, on a probe batch of ``input_shape``
    (all zeros, all ones, uniform noise), it gives ``num_classes`` finite logits per input;
    CheckpointError naming ``source`` and the data otherwise."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    bad = [k for k, v in tensors if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{source}: weights hold NaN or infinite values ({', '.join(bad[:3])})")
    device = next((v.device for _, v in tensors), torch.device("cpu"))
    shape = tuple(int(s) for s in input_shape)
    probe = torch.rand((_PROBE_POINTS, *shape), generator=torch.Generator().manual_seed(0))
    probe[0] = 0.0
    probe[1] = 1.0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model(probe.to(device))
    except Exception as exc:  # noqa: BLE001 - a model that fails the probe in any way does not fit
        raise CheckpointError(f"{source}: the model fails on {data_name} inputs: {_first_line(exc)}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.shape != (_PROBE_POINTS, num_classes):
        width = list(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckpointError(f"{source}: the model gives outputs of shape {width} per input, but {data_name} "
                              f"has {num_classes} classes")
    if not bool(torch.isfinite(out).all()):
        raise CheckpointError(f"{source}: the model's outputs are NaN or infinite on a probe batch")


def check_compatible(model: nn.Module, meta: dict, dataset: DatasetShape, source: str | Path = "checkpoint") -> None:
    """A built model fits ``dataset``: header agrees, all parameters and buffers are finite, and
    on a probe batch it gives one finite logit per class of the dataset.

    The dashboard, the explorer and the CLI call this before sampling, so a model that does not
    fit the data is refused in one line instead of certifying every point as some class.
    """
    check_header(meta, dataset, source)
    check_outputs(model, dataset.input_shape, dataset.num_classes, source, dataset.name)


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", expected_dataset: str | None = None
) -> tuple[nn.Module, dict]:
    """(model in eval mode on ``device``, meta). CheckpointError on corrupt/foreign/mismatched files.

    With ``expected_dataset`` (a registered dataset), the header is compared with it before
    building and ``check_compatible`` runs on the built model.
    """
    payload = read_checkpoint(path)
    meta = payload["meta"]
    info = None
    if expected_dataset is not None:
        if meta["dataset"] != expected_dataset:
            raise CheckpointError(f"{path} was trained on {meta['dataset']!r}, not on {expected_dataset!r}")
        info = DATASET_INFO.get(expected_dataset)
        if info is not None:
            check_header(meta, info, path)
    check_weights(payload, path)
    model = _skeleton(meta, path)
    # assign=True: the loaded tensors become the parameters, so nothing is allocated or initialised twice
    model.load_state_dict(payload["state_dict"], strict=True, assign=True)
    model = model.to(device).eval()
    if info is not None:
        check_compatible(model, meta, info, path)
    return model, meta


def _reason(exc: CheckpointError, path: Path) -> str:
    """The message of ``exc`` without the file name it starts with."""
    text = str(exc)
    for prefix in (f"checkpoint {path}", str(path)):
        if text.startswith(prefix):
            return text[len(prefix):].lstrip(": ")
    return text


def scan_checkpoints(
    dirs: Iterable[str | Path] = ("assets", "runs/checkpoints"), dataset: str | None = None
) -> tuple[list[tuple[Path, dict]], list[tuple[Path, str]]]:
    """Every ``*.pt`` file in ``dirs``, sorted by path: ([(path, meta)] usable, [(path, reason)] not).

    A file is usable when it reads as a smoothviz checkpoint whose header fits its registered
    dataset and whose weights fit its architecture and are finite; ``dataset`` keeps the usable
    ones of that dataset (failures are all listed: their dataset may be unreadable). Resume files
    (``*.pt.resume``) are not checkpoints and are not listed.
    """
    found: list[tuple[Path, dict]] = []
    failed: list[tuple[Path, str]] = []
    for d in dirs:
        directory = Path(d)
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.pt")):
            try:
                payload = read_checkpoint(path)
                meta = payload["meta"]
                info = DATASET_INFO.get(meta["dataset"])
                if info is None:
                    raise CheckpointError(f"{path} was trained on unknown dataset {meta['dataset']!r}")
                check_header(meta, info, path)
                check_weights(payload, path)
            except CheckpointError as exc:
                failed.append((path, _reason(exc, path)))
                continue
            if dataset is None or meta["dataset"] == dataset:
                found.append((path, meta))
    return found, failed


def list_checkpoints(
    dirs: Iterable[str | Path] = ("assets", "runs/checkpoints"), dataset: str | None = None
) -> list[tuple[Path, dict]]:
    """(path, meta) for every usable ``*.pt`` checkpoint in ``dirs`` (``scan_checkpoints``' first list)."""
    return scan_checkpoints(dirs, dataset)[0]
