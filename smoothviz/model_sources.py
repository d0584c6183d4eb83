"""Foreign models for the engine: one adapter per source, each giving (nn.Module, ModelInfo).

Sources (``ModelRequest``):

- **Reference-code checkpoints** (``--model FILE``): the ``torch.save`` of ``{"epoch", "arch",
  "state_dict", "optimizer"}`` written by the randomized-smoothing code of Cohen et al. 2019
  (locuslab/smoothing, ``code/train.py``) and by SmoothAdv (Salman et al. 2019), which reuses
  it; ``arch`` is ``cifar_resnet20``, ``cifar_resnet110``, ``resnet50`` or SmoothAdv's
  ``imagenet32_resnet110``. The state dict belongs to ``Sequential(NormalizeLayer, model)`` (for
  ResNet-50 the model sits inside DataParallel, so keys carry ``1.module.``). Their
  NormalizeLayer keeps means and standard deviations as plain tensors, not buffers, so they are
  not in the file: the architecture implies them (``code/datasets.py``: CIFAR-10 and ImageNet
  values, rebuilt here as a first layer). MACER's checkpoints (``{"net", "epoch"}``, a bare
  ResNet-110 or LeNet trained on unnormalised inputs) load as well. The architectures are
  rebuilt exactly (``code/archs/cifar_resnet.py``: same layer names, fixed 8x8 average pool,
  1x1-convolution shortcuts; torchvision's ResNet-50).
- **torchvision classifiers** (``--model torchvision:NAME --weights FILE``): the library's
  architecture, a local state dict, and the documented preprocessing of the published weights
  the file is (recognised by its SHA-256 prefix, as torch.hub names them), else of the model's
  default weights: resize and centre crop are applied to the [0, 1] image before the noise,
  normalisation is the model's first layer.
- **TorchScript and torch.export archives** (``.pt`` from ``torch.jit.save``, ``.pt2`` from
  ``torch.export.save``): any architecture, no Python class needed.
- **The user's own code** (``--model-code FILE.py:FUNCTION``, optionally ``--weights FILE``):
  FUNCTION() builds the nn.Module.

Trust. Checkpoints and weight files load with ``torch.load(weights_only=True)``: plain data and
tensors only, nothing in the file runs. An object that is not plain data (``argparse.Namespace``
of training arguments, say) is replaced by an inert stand-in that is never built, and the
description says which were left unread. Two sources execute code and are opt-in only:
``--model-code`` runs the user's Python file, and loading an archive can execute code it
contains (PyTorch documents ``torch.jit.load`` and ``torch.export.load`` as unsafe for
untrusted files: TorchScript programs are interpreted, and ``torch.export.load`` falls back to
full unpickling for pickled weights, unpickles opaque objects and evaluates shape expressions
with sympy), so archives need ``trust_archive`` (``--trust-archive``). A run in the store that
needs either is executed again only when the caller trusts it explicitly (``trust_code``).

Every model declares, or is told, its input shape, number of classes and value range;
``check_fits`` compares them with the data and probes the model before anything is sampled.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import sys
import types
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from smoothviz.cost import MAX_INPUT_ELEMENTS
from smoothviz.data_sources import Preprocess
from smoothviz.errors import CheckpointError, InvalidArgument
from smoothviz.models import CHECKPOINT_FORMAT, Normalize, check_model_file, check_outputs
from smoothviz.reference_archs import NORMALISATIONS, MacerLeNet, ReferenceCifarResNet, ReferenceNormalize

ARCHIVE_METADATA = "smoothviz.json"  # extra file of an archive declaring its ModelInfo fields
UNIT_RANGE = (0.0, 1.0)
_MAX_CLASSES = 100_000
_MAX_UNREAD = 32  # distinct non-plain objects a checkpoint may hold before it is refused

NORMALISATION_CHOICES = (*NORMALISATIONS, "none")

# arch -> (CIFAR ResNet depth or None for ResNet-50, classes, input shape, dataset, normalisation)
REFERENCE_ARCHS: dict[str, tuple[int | None, int, tuple[int, ...], str, str]] = {
    "cifar_resnet20": (20, 10, (3, 32, 32), "cifar10", "cifar10"),
    "cifar_resnet110": (110, 10, (3, 32, 32), "cifar10", "cifar10"),
    "imagenet32_resnet110": (110, 1000, (3, 32, 32), "imagenet32", "cifar10"),
    "resnet50": (None, 1000, (3, 224, 224), "imagenet", "imagenet"),
}
# The reference code's ImageNet test transform: Scale(256), CenterCrop(224), ToTensor.
REFERENCE_IMAGENET_PREPROCESS = Preprocess(resize=256, crop=224)

# Builder arguments torchvision's own builders set when they load published weights.
_PUBLISHED_KWARGS = {
    "googlenet": {"transform_input": True, "aux_logits": True, "init_weights": False},
    "inception_v3": {"transform_input": True, "aux_logits": True, "init_weights": False},
}


@dataclass(frozen=True)
class ModelInfo:
    """What a model takes and gives, and where it comes from.

    ``input_shape``, ``num_classes`` and ``value_range`` are compared with the data;
    ``preprocess`` is the resize/crop applied to images before the noise; ``normalisation``
    says in words what the first layer does; ``trained_sigma`` and ``dataset`` are what is
    known of its training (None when unknown); ``source`` describes the file in one line;
    ``sha256`` is the model file's hash; ``runs_code`` is true for archives and user code.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    value_range: tuple[float, float]
    normalisation: str
    trained_sigma: float | None
    dataset: str | None
    source: str
    sha256: str | None
    preprocess: Preprocess | None = None
    runs_code: bool = False
    kind: str = ""
    arch: str = ""


@dataclass(frozen=True)
class ModelRequest:
    """One model source and the metadata its user declared (None: not declared).

    ``model``: a model file (smoothviz, reference-code or MACER checkpoint, TorchScript or
    torch.export archive) or ``torchvision:NAME``; ``code``: ``FILE.py:FUNCTION`` (runs that
    file); ``weights``: the state dict for torchvision and user code; ``trust_archive``: load
    archives; ``normalisation``: override the reference code's first layer (a key of
    NORMALISATIONS or ``none``).
    """

    model: str | None = None
    weights: str | None = None
    code: str | None = None
    trust_archive: bool = False
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    value_range: tuple[float, float] | None = None
    trained_sigma: float | None = None
    normalisation: str | None = None


class LoadedModel(NamedTuple):
    """A model in eval mode on its device and what it declares."""

    module: nn.Module
    info: ModelInfo


# ----------------------------------------------------------------------------- helpers


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _read_file(path: Path, what: str) -> bytes:
    """The bytes of a model file (read once, so what is hashed is what is loaded)."""
    check_model_file(path, what)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{what} {path}: cannot read it ({exc.strerror})") from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


class _Unread:
    """Stands in for an object in a checkpoint that is not plain data: never built, holds nothing."""

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        pass

    def __setstate__(self, _state: object) -> None:
        pass


_UNSUPPORTED_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")


def load_plain(data: bytes, where: str) -> tuple[Any, list[str]]:
    """``torch.load(weights_only=True)`` of ``data``; objects that are not plain data become
    inert ``_Unread`` stand-ins (their names are returned). Nothing in the file runs.

    Where this torch cannot substitute objects (before 2.5), such a file is refused instead.
    """
    unread: list[str] = []
    substitute = hasattr(torch.serialization, "safe_globals")
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if unread:
                    with torch.serialization.safe_globals([(_Unread, name) for name in unread]):
                        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                else:
                    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            return payload, unread
        except Exception as exc:  # noqa: BLE001 - any bytes may arrive here
            found = _UNSUPPORTED_GLOBAL.search(str(exc))
            if found is None or not substitute or found.group(1) in unread or len(unread) >= _MAX_UNREAD:
                reason = f"it holds {found.group(1)}, which is not plain data" if found else _first_line(exc)
                raise CheckpointError(f"{where} is not a weights-only torch file ({reason}); nothing in it was run") \
                    from None
            unread.append(found.group(1))


def _tensor_state(obj: object) -> dict[str, torch.Tensor] | None:
    """``obj`` as a state dict (str -> tensor) when it is one, else None."""
    if isinstance(obj, Mapping) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in obj.items()):
        return dict(obj)
    return None


def _strip_prefix(state: dict[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
    """The state with the first of ``prefixes`` that every key carries removed."""
    for prefix in prefixes:
        if all(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Copy ``state`` into ``model``: same names and shapes, finite values; CheckpointError otherwise.

    BatchNorm's ``num_batches_tracked`` counters (absent from files written before torch 0.4.1,
    unused in eval mode) are filled with zeros when missing.
    """
    expected = model.state_dict()
    state = dict(state)
    for key, value in expected.items():
        if key not in state and key.endswith("num_batches_tracked"):
            state[key] = torch.zeros_like(value)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        detail = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        more = len(missing or unexpected) - 3
        raise CheckpointError(f"{what}: {detail}{f' and {more} more' if more > 0 else ''}")
    for key, want in expected.items():
        got = state[key]
        if got.shape != want.shape:
            raise CheckpointError(f"{what}: {key} has shape {list(got.shape)}, expected {list(want.shape)}")
        if got.is_floating_point() != want.is_floating_point():
            raise CheckpointError(f"{what}: {key} has dtype {got.dtype}, expected {want.dtype}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{what}: weights hold NaN or infinite values ({', '.join(bad[:3])})")
    model.load_state_dict(state, strict=True)


def _merge(name: str, flag: str, declared: Any, given: Any, source: str) -> Any:
    """A declared value, or the one given on the command line; both and different: an error."""
    if declared is None:
        return given
    if given is None or given == declared:
        return declared
    def show(v: Any) -> Any:
        return ",".join(map(str, v)) if isinstance(v, tuple) else v

    raise CheckpointError(f"{source} declares {name} {show(declared)}, but {flag} says {show(given)}")


def _finish(info: ModelInfo) -> ModelInfo:
    """Check the declared shape, classes and range are usable (bounded, consistent)."""
    shape, classes, (lo, hi) = info.input_shape, info.num_classes, info.value_range
    if not (1 <= len(shape) <= 3 and all(isinstance(s, int) and s >= 1 for s in shape)):
        raise CheckpointError(f"{info.source}: invalid input shape {list(shape)}")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise CheckpointError(f"{info.source}: inputs of shape {list(shape)} have {math.prod(shape):,} values, "
                              f"more than the {MAX_INPUT_ELEMENTS:,} allowed")
    if not 2 <= classes <= _MAX_CLASSES:
        raise CheckpointError(f"{info.source}: invalid number of classes {classes}")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise CheckpointError(f"{info.source}: invalid value range [{lo}, {hi}]")
    return info


def _built(build: Callable[[], nn.Module]) -> nn.Module:
    """A freshly built module, without touching the global random state (initialisation draws)."""
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build()


# ----------------------------------------------------------------------------- reference code


def _normalisation_layer(preset: str) -> tuple[nn.Module | None, str]:
    """The first layer of a preset and its description."""
    if preset == "none":
        return None, "none (the model takes [0, 1] inputs as they are)"
    mean, std = NORMALISATIONS[preset]
    base = preset.removeprefix("center-")
    if std is None:
        return ReferenceNormalize(mean, None), f"InputCenterLayer, mean {mean} (the reference {base} values), first layer"
    return ReferenceNormalize(mean, std), f"NormalizeLayer, mean {mean}, std {std} (the reference {base} values), first layer"


def _resnet50() -> nn.Module:
    from torchvision.models import resnet50

    return resnet50(weights=None)


def _macer_arch(state: dict[str, torch.Tensor]) -> tuple[str, Callable[[], nn.Module], tuple[int, ...], int, str | None]:
    """(arch, builder, input shape, classes, dataset) of a MACER state dict, from its keys and shapes."""
    if {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"} <= set(state):
        return "macer_lenet", MacerLeNet, (1, 28, 28), int(state["fc2.weight"].shape[0]), "mnist"
    if "layer4.0.conv1.weight" in state:
        return "resnet50", _resnet50, (3, 224, 224), int(state["fc.weight"].shape[0]), "imagenet"
    if "layer3.0.conv1.weight" in state and "fc.weight" in state:
        counts = [len({k.split(".")[1] for k in state if k.startswith(f"layer{s}.")}) for s in (1, 2, 3)]
        if len(set(counts)) != 1:
            raise CheckpointError(f"MACER checkpoint with {counts} blocks per stage is not a CIFAR ResNet")
        depth, classes = 6 * counts[0] + 2, int(state["fc.weight"].shape[0])
        return f"resnet{depth}", (lambda: ReferenceCifarResNet(depth, classes)), (3, 32, 32), classes, None
    raise CheckpointError("MACER checkpoint with an unknown architecture (neither its ResNet nor its LeNet)")


def _open_reference(payload: dict, request: ModelRequest, sha: str, path: Path, unread: list[str],
                    device: torch.device) -> LoadedModel:
    """A reference-code (or MACER) checkpoint, rebuilt exactly with its implied first layer."""
    macer = "net" in payload and "arch" not in payload
    raw = payload.get("net" if macer else "state_dict")
    state = _tensor_state(raw)
    if state is None:
        raise CheckpointError(f"{path}: its {'net' if macer else 'state_dict'} is not a dict of tensors")
    if macer:
        state = _strip_prefix(state, ("module.",))
        arch, build, shape, classes, dataset = _macer_arch(state)
        implied = "imagenet" if arch == "resnet50" else "none"
        layout = "MACER checkpoint"
        if arch == "resnet50" and request.normalisation is None:
            raise CheckpointError(f"{path}: a MACER ResNet-50 does not say how it normalises its inputs; "
                                  f"give --normalisation ({', '.join(NORMALISATION_CHOICES)})")
    else:
        arch = payload.get("arch")
        if arch not in REFERENCE_ARCHS:
            raise CheckpointError(f"{path}: reference-code checkpoint with unknown arch {arch!r} "
                                  f"(known: {', '.join(REFERENCE_ARCHS)})")
        depth, classes, shape, dataset, implied = REFERENCE_ARCHS[arch]
        build = _resnet50 if depth is None else (lambda: ReferenceCifarResNet(depth, classes))
        state = _strip_prefix(state, ("1.module.", "1.", "module."))
        layout = "reference-code checkpoint (locuslab/smoothing layout)"
    preset = request.normalisation or implied
    if preset not in NORMALISATION_CHOICES:
        raise InvalidArgument(f"--normalisation {preset!r}: choose from {', '.join(NORMALISATION_CHOICES)}")
    net = _built(build)
    epoch = payload.get("epoch")
    load_weights(net, state, f"{path}: weights do not fit {arch}")
    first, normalisation = _normalisation_layer(preset)
    model = net if first is None else nn.Sequential(first, net)
    notes = [f"epoch {epoch}"] if isinstance(epoch, int) else []
    if unread:
        notes.append(f"left unread: {', '.join(sorted(set(unread)))}")
    source = f"{layout}: {arch}" + (f" ({'; '.join(notes)})" if notes else "")
    preprocess = REFERENCE_IMAGENET_PREPROCESS if shape == (3, 224, 224) else None
    info = ModelInfo(
        input_shape=_merge("input shape", "--input-shape", shape, request.input_shape, str(path)),
        num_classes=_merge("classes", "--num-classes", classes, request.num_classes, str(path)),
        value_range=_merge("value range", "--value-range", UNIT_RANGE, request.value_range, str(path)),
        normalisation=normalisation, trained_sigma=request.trained_sigma, dataset=dataset, source=source,
        sha256=sha, preprocess=preprocess, kind="macer" if macer else "reference", arch=arch,
    )
    return LoadedModel(model.to(device).eval(), _finish(info))


# ----------------------------------------------------------------------------- torchvision


def torchvision_names() -> list[str]:
    """torchvision's classification models (``torchvision.models.list_models``)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _published_weights(name: str, sha: str):
    """(the weights enum member whose file this is, or None; the model's default weights, or None)."""
    from torchvision.models import get_model_weights

    try:
        weights = list(get_model_weights(name))
    except (ValueError, KeyError):
        return None, None
    default = getattr(get_model_weights(name), "DEFAULT", None)
    for w in weights:
        tag = Path(w.url).stem.rsplit("-", 1)[-1]
        if re.fullmatch(r"[0-9a-f]{6,64}", tag) and sha.startswith(tag):
            return w, default
    return None, default


def _state_from(payload: object, where: str) -> dict[str, torch.Tensor]:
    """The state dict in a weights file: the file itself, or its ``state_dict``/``model``/``net``."""
    state = _tensor_state(payload)
    if state is None and isinstance(payload, Mapping):
        for key in ("state_dict", "model", "net"):
            state = _tensor_state(payload.get(key))
            if state is not None:
                break
    if state is None:
        raise CheckpointError(f"{where} holds no state dict (a dict of tensors, or one under 'state_dict', "
                              "'model' or 'net')")
    return _strip_prefix(state, ("module.",))


def _open_torchvision(name: str, request: ModelRequest, device: torch.device) -> LoadedModel:
    from torchvision.models import get_model

    names = torchvision_names()
    if name not in names:
        close = [n for n in names if n.startswith(name[:4])][:6] or names[:6]
        raise InvalidArgument(f"--model torchvision:{name}: not a torchvision classifier (e.g. {', '.join(close)})")
    if request.weights is None:
        raise InvalidArgument(f"--model torchvision:{name} needs --weights FILE (a local state dict; nothing is "
                              "downloaded)")
    path = Path(request.weights).expanduser()
    data = _read_file(path, "weights")
    sha = sha256_bytes(data)
    payload, unread = load_plain(data, str(path))
    state = _state_from(payload, str(path))
    published, default = _published_weights(name, sha)
    chosen = published or default
    transform = chosen.transforms() if chosen is not None else None
    if published is not None:
        classes = len(published.meta["categories"])
        about = f"torchvision {name}, published weights {published}"
    else:
        classes = len(default.meta["categories"]) if default is not None else None
        about = f"torchvision {name}, weights {path.name} (not a published file; " + \
                (f"preprocessing of {default})" if default is not None else "no documented preprocessing)")
    if unread:
        about += f"; left unread: {', '.join(sorted(set(unread)))}"
    classes = request.num_classes or classes
    if classes is None:
        raise CheckpointError(f"torchvision {name}: no published weights say its classes; give --num-classes")
    kwargs = dict(_PUBLISHED_KWARGS.get(name, {})) if published is not None else {}
    try:
        net = _built(lambda: get_model(name, weights=None, num_classes=classes, **kwargs))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"torchvision {name}: cannot build it with {classes} classes ({_first_line(exc)})") from None
    load_weights(net, state, f"{path}: weights do not fit torchvision {name} with {classes} classes")
    if transform is not None:
        mean, std = tuple(transform.mean), tuple(transform.std)
        crop, resize = int(transform.crop_size[0]), int(transform.resize_size[0])
        preprocess = Preprocess(resize=resize, crop=crop, interpolation=transform.interpolation.value)
        shape: tuple[int, ...] | None = (3, crop, crop)
    else:
        mean, std = NORMALISATIONS["imagenet"]
        preprocess, shape = None, None
    model = nn.Sequential(Normalize(mean, std, (3, 1, 1)), net)
    shape = _merge("input shape", "--input-shape", shape, request.input_shape, f"torchvision {name}")
    if shape is None:
        raise CheckpointError(f"torchvision {name}: give --input-shape C,H,W")
    info = ModelInfo(
        input_shape=shape, num_classes=classes,
        value_range=_merge("value range", "--value-range", UNIT_RANGE, request.value_range, f"torchvision {name}"),
        normalisation=f"Normalize, mean {mean}, std {std} (torchvision's documented values), first layer",
        trained_sigma=request.trained_sigma, dataset=None, source=about, sha256=sha,
        preprocess=preprocess, kind="torchvision", arch=name,
    )
    return LoadedModel(model.to(device).eval(), _finish(info))


# ----------------------------------------------------------------------------- archives


def archive_kind(data: bytes | Path) -> str | None:
    """``torchscript`` or ``export`` when ``data`` (bytes, or a file) is such an archive, read
    from its list of members alone (nothing loaded); else None."""
    try:
        if isinstance(data, Path):
            with data.open("rb") as fh:
                if fh.read(2) != b"PK":
                    return None
            names = zipfile.ZipFile(data).namelist()
        elif data.startswith(b"PK"):
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        else:
            return None
    except (zipfile.BadZipFile, OSError):
        return None
    if any("/code/__torch__/" in n or n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith(("/archive_format", "serialized_exported_program.json")) or "/models/" in n for n in names):
        return "export"
    return None


def archive_metadata(input_shape: Iterable[int], num_classes: int, *, value_range: tuple[float, float] = UNIT_RANGE,
                     trained_sigma: float | None = None, dataset: str | None = None,
                     preprocess: Preprocess | None = None) -> dict[str, str]:
    """The extra file that makes an archive declare its ModelInfo fields: pass it as
    ``torch.jit.save(m, f, _extra_files=...)`` or ``torch.export.save(ep, f, extra_files=...)``."""
    meta = {"input_shape": [int(s) for s in input_shape], "num_classes": int(num_classes),
            "value_range": [float(v) for v in value_range], "trained_sigma": trained_sigma, "dataset": dataset,
            "preprocess": None if preprocess is None else asdict(preprocess)}
    return {ARCHIVE_METADATA: json.dumps(meta)}


def _read_metadata(data: bytes, where: str) -> dict:
    """The archive's declared metadata (its ``smoothviz.json`` extra file), read from the zip alone."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    member = next((n for n in archive.namelist() if n.endswith(f"/extra/{ARCHIVE_METADATA}")), None)
    if member is None:
        return {}
    try:
        meta = json.loads(archive.read(member).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{where}: its {ARCHIVE_METADATA} is not JSON") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: its {ARCHIVE_METADATA} is not a JSON object")
    out: dict[str, Any] = {}
    try:
        if meta.get("input_shape") is not None:
            out["input_shape"] = tuple(int(s) for s in meta["input_shape"])
        if meta.get("num_classes") is not None:
            out["num_classes"] = int(meta["num_classes"])
        if meta.get("value_range") is not None:
            lo, hi = meta["value_range"]
            out["value_range"] = (float(lo), float(hi))
        if meta.get("trained_sigma") is not None:
            out["trained_sigma"] = float(meta["trained_sigma"])
        if meta.get("dataset") is not None:
            out["dataset"] = str(meta["dataset"])
        if meta.get("preprocess") is not None:
            out["preprocess"] = Preprocess(**{k: meta["preprocess"].get(k) for k in ("resize", "crop")},
                                           interpolation=str(meta["preprocess"].get("interpolation") or "bilinear"))
    except (TypeError, ValueError, AttributeError):
        raise CheckpointError(f"{where}: its {ARCHIVE_METADATA} has a malformed field") from None
    return out


class ArchiveModule(nn.Module):
    """A TorchScript module or an exported program as an nn.Module the engine can call.

    The archive is evaluated as it was saved (TorchScript in eval mode; an exported program as
    traced), so ``train()``/``eval()`` change nothing inside it. It lives on the device it was
    loaded on (``to`` may change the memory format only). An exported program with a fixed batch
    size runs padded chunks of that size. The inner module is kept out of ``modules()``, since
    TorchScript modules take no forward hooks; ``measure_memory_per_sample`` counts the
    outputs of every operation instead.
    """

    def __init__(self, inner: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                 fixed_batch: int | None = None):
        super().__init__()
        self.__dict__["inner"] = inner
        self.fixed_batch = fixed_batch
        self.home = torch.device(device)
        # an empty parameter: the model's device for code that asks next(model.parameters())
        self.device_marker = nn.Parameter(torch.empty(0, device=device), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed_batch is None:
            return self.inner(x)
        size, n = self.fixed_batch, x.shape[0]
        outs = []
        for start in range(0, n, size):
            chunk = x[start:start + size]
            rows = chunk.shape[0]
            if rows < size:
                chunk = torch.cat([chunk, chunk.new_zeros((size - rows, *chunk.shape[1:]))])
            outs.append(self.inner(chunk)[:rows])
        return torch.cat(outs)

    def train(self, mode: bool = True) -> ArchiveModule:
        self.training = mode
        return self

    def to(self, *args: Any, **kwargs: Any) -> ArchiveModule:
        device = kwargs.get("device")
        for arg in args:
            if isinstance(arg, (str, torch.device)):
                device = arg
            elif isinstance(arg, (torch.dtype, torch.Tensor)):
                raise InvalidArgument("an archive model keeps the dtype and device it was loaded with")
        if kwargs.get("dtype") is not None:
            raise InvalidArgument("an archive model keeps the dtype it was saved with")
        if device is not None:
            want = torch.device(device)
            if want.type != self.home.type or (want.index or 0) != (self.home.index or 0):
                raise InvalidArgument(f"an archive model loaded on {self.home} cannot move to {want}; load it there")
        if kwargs.get("memory_format") is not None and isinstance(self.inner, nn.Module):
            self.__dict__["inner"] = self.inner.to(memory_format=kwargs["memory_format"])
        return self

    def measure_memory_per_sample(self, input_shape: tuple[int, ...], device: torch.device, options=None,
                                  probe_batch: int = 32):
        """speed.MemoryProbe of this model: on CUDA the allocator's peak (as for any model); on a
        CPU the bytes of every operation's outputs in a probe pass, doubled, plus the noise and
        noisy input (the bound ``speed.measure_memory_per_sample`` takes from module hooks)."""
        from torch.utils._python_dispatch import TorchDispatchMode

        from smoothviz import speed

        device = torch.device(device)
        if device.type == "cuda":
            return speed.measure_memory_per_sample(self, input_shape, device, options, probe_batch)
        total = 0

        class _Count(TorchDispatchMode):
            def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
                nonlocal total
                out = func(*args, **(kwargs or {}))
                for t in out if isinstance(out, (tuple, list)) else (out,):
                    if isinstance(t, torch.Tensor):
                        total += t.numel() * t.element_size()
                return out

        x = torch.rand((probe_batch, *input_shape), device=device)
        with torch.inference_mode(), speed.autocast_context(options or speed.EngineOptions(), device), _Count():
            self(x)
        per_input = math.prod(input_shape) * 4
        return speed.MemoryProbe(2 * math.ceil(total / probe_batch) + 3 * per_input, probe_batch,
                                 "cpu sum of operation outputs x2")


def _export_input_shape(program) -> tuple[int | None, tuple[int, ...] | None]:
    """(fixed batch size or None when dynamic, the per-input shape when static) of an exported
    program's single tensor input."""
    users = list(program.graph_signature.user_inputs)
    nodes = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in users]
    if len(nodes) != 1 or not isinstance(nodes[0].meta.get("val"), torch.Tensor):
        raise CheckpointError("the exported program must take exactly one tensor (a batch of inputs)")
    shape = nodes[0].meta["val"].shape
    dims = [d if isinstance(d, int) else None for d in shape]
    rest = tuple(dims[1:])
    return dims[0], (None if None in rest else rest)  # type: ignore[return-value]


def _open_archive(kind: str, data: bytes, path: Path, request: ModelRequest, device: torch.device) -> LoadedModel:
    if not request.trust_archive:
        what = "TorchScript" if kind == "torchscript" else "torch.export"
        raise CheckpointError(f"{path} is a {what} archive: loading one can run code it contains (PyTorch "
                              "documents it as unsafe for untrusted files); add --trust-archive if you trust it")
    declared = _read_metadata(data, str(path))
    fixed_batch = None
    program_shape = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if kind == "torchscript":
                inner = torch.jit.load(io.BytesIO(data), map_location=device)
                inner.eval()
            else:
                program = torch.export.load(io.BytesIO(data))
                move = getattr(getattr(torch.export, "passes", None), "move_to_device_pass", None)
                if device.type != "cpu":
                    if move is None:
                        raise CheckpointError(f"{path}: moving an exported program to {device} needs a newer torch")
                    program = move(program, device)
                batch, program_shape = _export_input_shape(program)
                fixed_batch = batch
                inner = program.module()
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged archive
            raise CheckpointError(f"{path}: cannot load the {kind} archive ({_first_line(exc)})") from None
    tensors = list(inner.parameters()) + list(inner.buffers()) if isinstance(inner, nn.Module) else []
    if kind == "export":
        tensors += [t for t in program.state_dict.values() if isinstance(t, torch.Tensor)]
    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors):
        raise CheckpointError(f"{path}: weights hold NaN or infinite values")
    where = str(path)
    shape = _merge("input shape", "--input-shape", declared.get("input_shape"), request.input_shape, where)
    shape = _merge("input shape", "the exported program", program_shape, shape, where) if program_shape else shape
    classes = _merge("classes", "--num-classes", declared.get("num_classes"), request.num_classes, where)
    if shape is None:
        raise CheckpointError(f"{path} declares no input shape; give --input-shape C,H,W (or save the archive with "
                              f"model_sources.archive_metadata)")
    if classes is None:
        raise CheckpointError(f"{path} declares no number of classes; give --num-classes K")
    value_range = _merge("value range", "--value-range", declared.get("value_range"), request.value_range, where)
    sigma = _merge("trained sigma", "--trained-sigma", declared.get("trained_sigma"), request.trained_sigma, where)
    label = "TorchScript archive" if kind == "torchscript" else "torch.export archive"
    batch_note = f", fixed batch {fixed_batch}" if fixed_batch else ""
    info = ModelInfo(
        input_shape=tuple(shape), num_classes=int(classes), value_range=value_range or UNIT_RANGE,
        normalisation="inside the archive (not inspected)", trained_sigma=sigma, dataset=declared.get("dataset"),
        source=f"{label} {path.name}{batch_note}", sha256=sha256_bytes(data),
        preprocess=declared.get("preprocess"), runs_code=True, kind=kind,
    )
    return LoadedModel(ArchiveModule(inner, device, fixed_batch), _finish(info))


# ----------------------------------------------------------------------------- user code


def parse_code(text: str) -> tuple[Path, str]:
    """(file, function) of ``FILE.py:FUNCTION``; InvalidArgument when malformed or missing."""
    file_text, sep, function = text.rpartition(":")
    if not sep or not function.isidentifier():
        raise InvalidArgument(f"--model-code {text!r}: expected FILE.py:FUNCTION")
    path = Path(file_text).expanduser().resolve()
    if path.suffix != ".py":
        raise InvalidArgument(f"--model-code {text!r}: {path.name} is not a .py file")
    if not path.is_file():
        raise InvalidArgument(f"--model-code {text!r}: {path} not found")
    return path, function


def _open_code(request: ModelRequest, device: torch.device) -> LoadedModel:
    """Run the user's FILE.py and call FUNCTION() for the model (the one source that runs user code)."""
    path, function = parse_code(str(request.code))
    source = _read_file(path, "model code")
    code_sha = sha256_bytes(source)
    where = f"--model-code {path.name}:{function}"
    module = types.ModuleType(f"smoothviz_user_model_{code_sha[:16]}")
    module.__file__ = str(path)
    sys.modules[module.__name__] = module
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - the user asked for their code
        builder = getattr(module, function, None)
        if not callable(builder):
            raise CheckpointError(f"{where}: {path.name} defines no function {function}")
        with torch.random.fork_rng(devices=[]):
            net = builder()
    except CheckpointError:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code may raise anything
        raise CheckpointError(f"{where} raised {type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(net, nn.Module):
        raise CheckpointError(f"{where} returned a {type(net).__name__}, not a torch.nn.Module")
    sha = code_sha
    notes = []
    if request.weights is not None:
        wpath = Path(request.weights).expanduser()
        data = _read_file(wpath, "weights")
        sha = sha256_bytes(data)
        payload, unread = load_plain(data, str(wpath))
        load_weights(net, _state_from(payload, str(wpath)), f"{wpath}: weights do not fit the model of {where}")
        notes.append(f"weights {wpath.name}" + (f", left unread: {', '.join(sorted(set(unread)))}" if unread else ""))
    declared_shape = getattr(net, "input_shape", None)
    declared_classes = getattr(net, "num_classes", None)
    shape = _merge("input shape", "--input-shape",
                   tuple(int(s) for s in declared_shape) if declared_shape is not None else None,
                   request.input_shape, where)
    classes = _merge("classes", "--num-classes", int(declared_classes) if declared_classes is not None else None,
                     request.num_classes, where)
    if shape is None:
        raise CheckpointError(f"{where}: give --input-shape C,H,W (or set input_shape on the module)")
    if classes is None:
        raise CheckpointError(f"{where}: give --num-classes K (or set num_classes on the module)")
    info = ModelInfo(
        input_shape=shape, num_classes=classes, value_range=request.value_range or UNIT_RANGE,
        normalisation="inside the user's model (not inspected)", trained_sigma=request.trained_sigma,
        dataset=None, source=f"user code {path.name}:{function}" + (f" ({'; '.join(notes)})" if notes else ""),
        sha256=sha, runs_code=True, kind="code", arch=f"{path.name}:{function}",
    )
    return LoadedModel(net.to(device).eval(), _finish(info))


# ----------------------------------------------------------------------------- dispatch


def torchvision_name(model: str | None) -> str | None:
    """NAME of ``torchvision:NAME``, else None."""
    if model is not None and model.startswith("torchvision:") and not Path(model).exists():
        return model.split(":", 1)[1].strip()
    return None


def _foreign_payload(payload: object) -> bool:
    """Whether a weights-only payload is a reference-code or MACER checkpoint or bare weights."""
    if not isinstance(payload, Mapping) or payload.get("format") == CHECKPOINT_FORMAT:
        return False
    return {"arch", "state_dict"} <= set(payload) or "net" in payload or _tensor_state(payload) is not None


def is_smoothviz_checkpoint(model: str) -> bool:
    """Whether ``--model`` is for ``models.read_checkpoint``: not a torchvision name, an archive,
    a reference-code or MACER checkpoint or bare weights. A file that cannot be read at all counts
    as one, so that ``read_checkpoint`` reports it as it always has."""
    if torchvision_name(model) is not None:
        return False
    path = Path(model).expanduser()
    if not path.is_file():
        return True
    data = _read_file(path, "checkpoint")
    if archive_kind(data) is not None:
        return False
    try:
        payload, _ = load_plain(data, str(path))
    except CheckpointError:
        return True
    return not _foreign_payload(payload)


def open_model(request: ModelRequest, device: str | torch.device = "cpu") -> LoadedModel:
    """The foreign model ``request`` names, in eval mode on ``device``, and its ModelInfo.

    Smoothviz's own checkpoints load through ``models.load_checkpoint``, not here. Raises a
    one-line CheckpointError or InvalidArgument naming what does not fit.
    """
    device = torch.device(device)
    if request.code is not None:
        if request.model is not None:
            raise InvalidArgument("--model and --model-code name two models; give one")
        return _open_code(request, device)
    if request.model is None:
        raise InvalidArgument("--model: a model is required")
    name = torchvision_name(request.model)
    if name is not None:
        return _open_torchvision(name, request, device)
    path = Path(request.model).expanduser()
    data = _read_file(path, "checkpoint")
    kind = archive_kind(data)
    if request.weights is not None:
        raise InvalidArgument(f"--weights goes with torchvision:NAME or --model-code; {path.name} holds its own")
    if kind is not None:
        return _open_archive(kind, data, path, request, device)
    payload, unread = load_plain(data, str(path))
    if isinstance(payload, Mapping) and ({"arch", "state_dict"} <= set(payload) or "net" in payload):
        return _open_reference(dict(payload), request, sha256_bytes(data), path, unread, device)
    if _tensor_state(payload) is not None:
        raise CheckpointError(f"{path} holds bare weights (a state dict); name the architecture with "
                              f"--model torchvision:NAME --weights {path.name} or --model-code FILE.py:FUNCTION "
                              f"--weights {path.name}")
    raise CheckpointError(f"{path} is neither a smoothviz, a reference-code nor a MACER checkpoint")


def check_fits(model: nn.Module, info: ModelInfo, dataset, source: str = "the model") -> None:
    """The model fits ``dataset`` (a ``data.Dataset``): input shape, classes and value range agree,
    and a probe batch gives one finite logit per class; CheckpointError (one line) otherwise."""
    data_shape = tuple(int(s) for s in dataset.input_shape)
    if tuple(info.input_shape) != data_shape:
        raise CheckpointError(f"{source} takes inputs of shape {list(info.input_shape)}, but {dataset.name} has "
                              f"shape {list(data_shape)}")
    if int(info.num_classes) != int(dataset.num_classes):
        raise CheckpointError(f"{source} gives {info.num_classes} classes, but {dataset.name} has "
                              f"{dataset.num_classes}")
    if tuple(float(v) for v in info.value_range) != UNIT_RANGE:
        lo, hi = info.value_range
        raise CheckpointError(f"{source} takes inputs in [{lo:g}, {hi:g}], but smoothviz data are in [0, 1] (the "
                              "noise is added there); put the rescaling inside the model")
    check_outputs(model, data_shape, int(info.num_classes), source, dataset.name)


# ----------------------------------------------------------------------------- runs


def run_record(request: ModelRequest, info: ModelInfo, data_name: str) -> dict:
    """What a run records of a foreign model (under ``options["model"]``): enough to rebuild it
    exactly and the metadata it was certified with. The model file's SHA-256 is the run's
    ``checkpoint_sha256``; user code adds the SHA-256 of its file."""
    record: dict[str, Any] = {
        "source": info.kind, "arch": info.arch, "description": info.source,
        "input_shape": list(info.input_shape), "num_classes": int(info.num_classes),
        "value_range": [float(v) for v in info.value_range], "trained_sigma": info.trained_sigma,
        "dataset": info.dataset or data_name, "normalisation": request.normalisation,
    }
    if info.kind == "code":
        path, function = parse_code(str(request.code))
        record["code"] = f"{path}:{function}"
        record["code_sha256"] = sha256_bytes(_read_file(path, "model code"))
        record["weights"] = request.weights is not None
    return record


def run_checkpoint(request: ModelRequest) -> str:
    """The file a run records as its checkpoint: the model file, the weights, or the code file."""
    if request.code is not None and request.weights is None:
        return str(parse_code(request.code)[0])
    if request.weights is not None:
        return str(Path(request.weights).expanduser().resolve())
    return str(Path(str(request.model)).expanduser().resolve())


def request_from_record(checkpoint: str, record: Mapping) -> ModelRequest:
    """The ModelRequest that rebuilds a recorded foreign model (its trust flags off)."""
    kind = record.get("source")
    common = {"input_shape": tuple(record["input_shape"]), "num_classes": int(record["num_classes"]),
              "value_range": tuple(record["value_range"]), "trained_sigma": record.get("trained_sigma"),
              "normalisation": record.get("normalisation")}
    if kind == "torchvision":
        return ModelRequest(model=f"torchvision:{record['arch']}", weights=checkpoint, **common)
    if kind == "code":
        return ModelRequest(code=str(record["code"]), weights=checkpoint if record.get("weights") else None, **common)
    if kind in ("reference", "macer", "torchscript", "export"):
        return ModelRequest(model=checkpoint, **common)
    raise CheckpointError(f"the run records an unknown model source {kind!r}")


def load_run_model(checkpoint: str, record: Mapping, dataset, device: torch.device,
                   trust_code: bool = False) -> tuple[nn.Module, dict]:
    """A recorded foreign model, checked against ``dataset``: (model, meta) for the engine.

    A model that runs code (user code, an archive) loads only with ``trust_code``, and user code
    only when its file still has the recorded SHA-256.
    """
    request = request_from_record(checkpoint, record)
    if record.get("source") in ("code", "torchscript", "export"):
        if not trust_code:
            what = f"model code {record.get('code')}" if record.get("source") == "code" else f"archive {checkpoint}"
            flag = f"--model-code {record.get('code')}" if record.get("source") == "code" else "--trust-archive"
            raise CheckpointError(f"this run executes {what}; allow it with {flag}")
        request = replace(request, trust_archive=True)
    if record.get("source") == "code":
        path, _ = parse_code(str(record["code"]))
        if sha256_bytes(_read_file(path, "model code")) != record.get("code_sha256"):
            raise CheckpointError(f"model code {path} changed since the run was recorded (SHA-256 differs)")
    model, info = open_model(request, device)
    check_fits(model, info, dataset, info.source)
    meta = {"dataset": record.get("dataset"), "arch": info.arch or info.kind, "input_shape": list(info.input_shape),
            "num_classes": info.num_classes, "source": info.source,
            "sigma": None if info.trained_sigma is None else f"constant:{info.trained_sigma!r}"}
    return model, meta

