"""Researchers' own data as the engine's ``Dataset``: image folders and numpy arrays.

A source is named by a string ``KIND[(OPTIONS)]:PATH``:

- ``imagefolder:PATH``: class folders of images in torchvision's ImageFolder layout (an ImageNet
  validation set prepared for ImageFolder, for instance); classes are the sorted folder names and
  points are listed in ImageFolder's order, so index i is the reference code's ``dataset[i]``.
- ``npz:FILE``: arrays ``x`` (floating point, channels first, values in [0, 1]) and ``y``
  (integer labels), optionally ``x_train``/``y_train`` (training points, e.g. for the kNN
  sigma) and ``class_names``; read with ``allow_pickle=False``, so a file holding a pickle is
  refused and nothing in it runs.

OPTIONS (comma separated): ``resize=N`` (shorter side to N pixels), ``crop=N`` (centre crop
N x N), ``interpolation=bilinear|bicubic|nearest``, ``channels=1|3`` (image folders: grey or RGB)
and ``classes=K`` (npz without class names). Resize and crop are applied to the image in [0, 1]
before any noise, as the reference code's test transform does (ImageNet: resize 256, centre crop
224); normalisation stays inside the model. ``canonical_source`` gives the absolute, ordered form
that names the dataset in the results store.

Points are decoded when they are indexed (``LazyInputs``), so certifying 10 images of a 50,000
image folder decodes 10 images. Only the standard library is imported at module level.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import operator
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smoothviz.cost import MAX_INPUT_ELEMENTS
from smoothviz.errors import DatasetUnavailable, InvalidArgument

if TYPE_CHECKING:
    import numpy as np
    import torch

    from smoothviz.data import Dataset

KINDS = ("imagefolder", "npz")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# torchvision's ImageFolder extensions (torchvision.datasets.folder.IMG_EXTENSIONS).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# The decoders PIL may use: these formats only, so a file named .png that holds e.g. EPS (which
# PIL hands to Ghostscript) is refused instead of decoded.
_PIL_FORMATS = ("JPEG", "PNG", "PPM", "BMP", "TIFF", "WEBP")
_MAX_SIDE = 8192  # largest resize or crop a source string may ask for
_MAX_CLASSES = 100_000
MAX_ARRAY_BYTES = 8 * 2**30  # an npz's arrays, decompressed, may hold at most this much
DECODED_CACHE_BYTES = 256 * 2**20  # decoded points kept per source for repeated indexing


@dataclass(frozen=True)
class Preprocess:
    """The resize and centre crop a model expects, applied to images in [0, 1] before the noise."""

    resize: int | None = None
    crop: int | None = None
    interpolation: str = "bilinear"

    @property
    def empty(self) -> bool:
        """Neither resize nor crop."""
        return self.resize is None and self.crop is None


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source string: kind, absolute path and options."""

    kind: str
    path: str
    preprocess: Preprocess = Preprocess()
    channels: int | None = None
    classes: int | None = None

    @property
    def name(self) -> str:
        """The canonical source string (absolute path, options in a fixed order)."""
        opts = []
        if self.preprocess.resize is not None:
            opts.append(f"resize={self.preprocess.resize}")
        if self.preprocess.crop is not None:
            opts.append(f"crop={self.preprocess.crop}")
        if not self.preprocess.empty and self.preprocess.interpolation != "bilinear":
            opts.append(f"interpolation={self.preprocess.interpolation}")
        if self.channels is not None and self.channels != 3:
            opts.append(f"channels={self.channels}")
        if self.classes is not None:
            opts.append(f"classes={self.classes}")
        head = f"{self.kind}({','.join(opts)})" if opts else self.kind
        return f"{head}:{self.path}"

    def with_defaults(self, preprocess: Preprocess | None, channels: int | None) -> SourceSpec:
        """This source with a model's preprocessing and channel count where it names none itself."""
        spec = self
        if preprocess is not None and spec.preprocess.empty and not preprocess.empty:
            spec = replace(spec, preprocess=preprocess)
        if spec.kind == "imagefolder" and spec.channels is None and channels in (1, 3):
            spec = replace(spec, channels=channels)
        return spec


def is_source(text: object) -> bool:
    """Whether ``text`` names a data source (``imagefolder:...`` or ``npz:...``), not a dataset name."""
    if not isinstance(text, str) or ":" not in text:
        return False
    head = text.split(":", 1)[0]
    return head.split("(", 1)[0].strip().lower() in KINDS


def _int_option(key: str, value: str, low: int, high: int, text: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise InvalidArgument(f"data source {text!r}: {key}={value!r} is not an integer") from None
    if not low <= number <= high:
        raise InvalidArgument(f"data source {text!r}: {key}={number} is outside {low} to {high}")
    return number


def parse_source(text: str) -> SourceSpec:
    """Parse ``KIND[(OPTIONS)]:PATH``; InvalidArgument names what is wrong. Touches no file."""
    head, _, path = text.partition(":")
    kind, paren, rest = head.partition("(")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise InvalidArgument(f"data source {text!r}: unknown kind {kind!r}; expected "
                              "imagefolder:PATH or npz:FILE")
    if paren and not rest.endswith(")"):
        raise InvalidArgument(f"data source {text!r}: options must be written KIND(key=value,...):PATH")
    options: dict[str, str] = {}
    for part in (p.strip() for p in rest[:-1].split(",")) if paren else ():
        if not part:
            continue
        key, eq, value = (s.strip() for s in part.partition("="))
        if not eq or key in options:
            raise InvalidArgument(f"data source {text!r}: option {part!r} is not key=value or is given twice")
        options[key] = value
    allowed = {"resize", "crop", "interpolation", "channels"} if kind == "imagefolder" \
        else {"resize", "crop", "interpolation", "classes"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InvalidArgument(f"data source {text!r}: unknown option {unknown[0]!r} for {kind} "
                              f"({', '.join(sorted(allowed))})")
    if not path.strip():
        raise InvalidArgument(f"data source {text!r}: no path after '{kind}:'")
    interpolation = options.get("interpolation", "bilinear").lower()
    if interpolation not in INTERPOLATIONS:
        raise InvalidArgument(f"data source {text!r}: interpolation must be one of {', '.join(INTERPOLATIONS)}")
    resize = _int_option("resize", options["resize"], 1, _MAX_SIDE, text) if "resize" in options else None
    crop = _int_option("crop", options["crop"], 1, _MAX_SIDE, text) if "crop" in options else None
    channels = _int_option("channels", options["channels"], 1, 3, text) if "channels" in options else None
    if channels == 2:
        raise InvalidArgument(f"data source {text!r}: channels must be 1 (grey) or 3 (RGB)")
    classes = _int_option("classes", options["classes"], 2, _MAX_CLASSES, text) if "classes" in options else None
    absolute = str(Path(path.strip()).expanduser().resolve())
    return SourceSpec(kind, absolute, Preprocess(resize, crop, interpolation), channels, classes)


def canonical_source(text: str) -> str:
    """The canonical form of a source string (absolute path, options ordered)."""
    return parse_source(text).name


# ----------------------------------------------------------------------------- lazy inputs


class LazyInputs:
    """The inputs of one split, decoded when indexed: ``x[indices]`` decodes only those points.

    Behaves like the read-only float32 tensor [N, *input_shape] the engine indexes: ``shape``,
    ``len``, and indexing by an int, a slice, a list or an integer tensor (giving a tensor).
    Decoded points are kept up to DECODED_CACHE_BYTES, so the repeated indexing of one run
    decodes each point once; ``decoded`` counts the decodes done.
    """

    def __init__(self, count: int, input_shape: tuple[int, ...], load: Callable[[int], torch.Tensor],
                 cache_bytes: int = DECODED_CACHE_BYTES) -> None:
        import torch

        self._count = int(count)
        self.input_shape = tuple(int(s) for s in input_shape)
        self._load = load
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._cache_points = max(1, cache_bytes // max(1, 4 * math.prod(self.input_shape)))
        self.decoded = 0
        self.shape = torch.Size((self._count, *self.input_shape))

    def __len__(self) -> int:
        return self._count

    def _point(self, i: int) -> torch.Tensor:
        if not -self._count <= i < self._count:
            raise IndexError(f"index {i} is outside the {self._count} points")
        i %= self._count
        hit = self._cache.get(i)
        if hit is not None:
            self._cache.move_to_end(i)
            return hit
        x = self._load(i)
        self.decoded += 1
        if tuple(x.shape) != self.input_shape:
            raise DatasetUnavailable(f"point {i} decodes to shape {list(x.shape)}, not {list(self.input_shape)}")
        self._cache[i] = x
        if len(self._cache) > self._cache_points:
            self._cache.popitem(last=False)
        return x

    def __getitem__(self, key: Any) -> torch.Tensor:
        import torch

        if isinstance(key, slice):
            positions: Sequence[int] = range(*key.indices(self._count))
        elif isinstance(key, torch.Tensor) and not key.is_floating_point() and key.dtype != torch.bool:
            if key.ndim == 0:
                return self._point(int(key))
            positions = [int(v) for v in key.reshape(-1).tolist()]
        elif isinstance(key, (list, tuple, range)) or type(key).__name__ == "ndarray":
            positions = [int(v) for v in key]
        elif hasattr(key, "__index__") and not isinstance(key, bool):
            return self._point(operator.index(key))
        else:
            raise TypeError(f"LazyInputs cannot be indexed by {type(key).__name__}")
        if not positions:
            return torch.empty((0, *self.input_shape))
        return torch.stack([self._point(i) for i in positions])

    def materialize(self) -> torch.Tensor:
        """Every point as one tensor (decodes the whole split)."""
        return self[slice(None)]


def materialize(x: Any) -> torch.Tensor:
    """``x`` as a tensor: LazyInputs decoded in full, tensors as they are."""
    return x.materialize() if isinstance(x, LazyInputs) else x


# ----------------------------------------------------------------------------- image folders


def _listing(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, [(file, class index)]) in torchvision ImageFolder's order, without decoding.

    Classes are the sorted sub-folders of ``root``; in each, files are walked in sorted order
    (symbolic links followed, each real folder once) and kept when their lower-cased name ends in
    an ImageFolder extension. Empty class folders still count as classes.
    """
    try:
        classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    except OSError as exc:
        raise DatasetUnavailable(f"imagefolder {root}: cannot list the folder ({exc.strerror})") from None
    if not classes:
        raise DatasetUnavailable(f"imagefolder {root}: no class folders (expected {root}/CLASS/IMAGE files)")
    samples: list[tuple[str, int]] = []
    for index, name in enumerate(classes):
        seen: set[str] = set()
        for folder, dirs, files in sorted(os.walk(root / name, followlinks=True)):
            real = os.path.realpath(folder)
            if real in seen:
                dirs.clear()
                continue
            seen.add(real)
            samples.extend((os.path.join(folder, f), index) for f in sorted(files)
                           if f.lower().endswith(IMAGE_EXTENSIONS))
    if not samples:
        raise DatasetUnavailable(f"imagefolder {root}: no images in its {len(classes)} class folders "
                                 f"(extensions {', '.join(IMAGE_EXTENSIONS)})")
    return classes, samples


def _interpolation(name: str):
    from torchvision.transforms import InterpolationMode

    return {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
            "nearest": InterpolationMode.NEAREST}[name]


def decode_image(data: bytes | str, spec: SourceSpec) -> torch.Tensor:
    """One image file as float32 [C, H, W] in [0, 1]: converted to grey or RGB, resized, cropped.

    The steps and their order are the reference code's test transform (PIL resize of the shorter
    side, centre crop, ToTensor). DatasetUnavailable (one line) when PIL cannot decode it.
    """
    import torchvision.transforms.functional as F
    from PIL import Image, UnidentifiedImageError

    where = data if isinstance(data, str) else "image"
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data, formats=list(_PIL_FORMATS)) as img:
            img = img.convert("L" if spec.channels == 1 else "RGB")
    except UnidentifiedImageError:
        raise DatasetUnavailable(f"cannot decode {where}: not an image of the formats read "
                                 f"({', '.join(_PIL_FORMATS)})") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types (OSError, SyntaxError, DecompressionBombError)
        first = str(exc).splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise DatasetUnavailable(f"cannot decode {where}: {first}") from None
    pre = spec.preprocess
    if pre.resize is not None:
        img = F.resize(img, pre.resize, interpolation=_interpolation(pre.interpolation))
    if pre.crop is not None:
        img = F.center_crop(img, pre.crop)
    return F.to_tensor(img)


def _check_elements(shape: Sequence[int], where: str) -> None:
    values = math.prod(int(s) for s in shape)
    if values > MAX_INPUT_ELEMENTS:
        raise DatasetUnavailable(f"{where}: inputs of shape {list(shape)} have {values:,} values, more than the "
                                 f"{MAX_INPUT_ELEMENTS:,} allowed; add a crop (e.g. imagefolder(resize=256,crop=224):PATH)")


def _image_shape(spec: SourceSpec, first: str) -> tuple[int, ...]:
    """The input shape of an image folder: from its crop, else from its first image."""
    channels = spec.channels or 3
    if spec.preprocess.crop is not None:
        shape: tuple[int, ...] = (channels, spec.preprocess.crop, spec.preprocess.crop)
    else:
        shape = tuple(decode_image(first, spec).shape)
    _check_elements(shape, f"imagefolder {spec.path}")
    return shape


def _load_imagefolder(spec: SourceSpec) -> Dataset:
    import torch

    from smoothviz.data import Dataset

    root = Path(spec.path)
    if not root.is_dir():
        raise DatasetUnavailable(f"imagefolder {root}: no such folder")
    classes, samples = _listing(root)
    shape = _image_shape(spec, samples[0][0])

    def load(i: int) -> torch.Tensor:
        x = decode_image(samples[i][0], spec)
        if tuple(x.shape) != shape:
            raise DatasetUnavailable(f"{samples[i][0]} decodes to shape {list(x.shape)}, but the folder's inputs have "
                                     f"shape {list(shape)}; give a crop: imagefolder(crop=N):{root}")
        return x

    empty = LazyInputs(0, shape, load)
    return Dataset(
        name=spec.name, train_x=empty, train_y=torch.zeros(0, dtype=torch.int64),  # type: ignore[arg-type]
        test_x=LazyInputs(len(samples), shape, load),  # type: ignore[arg-type]
        test_y=torch.tensor([c for _, c in samples], dtype=torch.int64),
        class_names=list(classes), input_shape=shape,
    )


# ----------------------------------------------------------------------------- npz arrays


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an npz, read from the headers (no data, no pickles)."""
    import zipfile

    import numpy as np

    out = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                        else np.lib.format.read_array_header_2_0
                    shape, _, dtype = reader(fh)
                out[info.filename[:-4]] = (tuple(int(s) for s in shape), dtype)
    except zipfile.BadZipFile:
        raise DatasetUnavailable(f"npz {path}: not an npz archive (numpy.savez writes one); "
                                 "pickles and other files are not read") from None
    except (OSError, ValueError) as exc:
        raise DatasetUnavailable(f"npz {path}: unreadable array header ({exc})") from None
    return out


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an npz, loaded with ``allow_pickle=False`` after their headers were checked."""
    import numpy as np

    if not path.is_file():
        raise DatasetUnavailable(f"npz {path}: no such file")
    headers = _npz_headers(path)
    for key, (_, dtype) in headers.items():
        if dtype.hasobject:
            raise DatasetUnavailable(f"npz {path}: array {key!r} holds Python objects (a pickle); "
                                     "smoothviz reads plain arrays only and loaded nothing")
    total = sum(math.prod(shape) * dtype.itemsize for shape, dtype in headers.values())
    if total > MAX_ARRAY_BYTES:
        raise DatasetUnavailable(f"npz {path}: its arrays hold {total / 2**30:.3g} GiB, more than the "
                                 f"{MAX_ARRAY_BYTES / 2**30:.0f} GiB allowed")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetUnavailable(f"npz {path}: {str(exc).splitlines()[0][:160]}") from None


def _check_x(x: np.ndarray, key: str, path: Path) -> None:
    import numpy as np

    if x.dtype.kind != "f":
        hint = " (divide uint8 images by 255)" if x.dtype == np.uint8 else ""
        raise DatasetUnavailable(f"npz {path}: {key} has dtype {x.dtype}; expected floating-point values in [0, 1]{hint}")
    if x.ndim < 2 or x.ndim > 4 or 0 in x.shape:
        raise DatasetUnavailable(f"npz {path}: {key} has shape {list(x.shape)}; expected [N, D], [N, H, W] or "
                                 "[N, C, H, W] with N >= 1")
    if not bool(np.isfinite(x).all()):
        raise DatasetUnavailable(f"npz {path}: {key} holds NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise DatasetUnavailable(f"npz {path}: {key} values span [{lo:.4g}, {hi:.4g}]; expected [0, 1] "
                                 "(noise is added in that range; normalisation belongs inside the model)")


def _check_y(y: np.ndarray, n: int, key: str, path: Path) -> None:
    if y.dtype.kind not in "iu" or y.ndim != 1 or len(y) != n:
        raise DatasetUnavailable(f"npz {path}: {key} must be {n} integer labels, got dtype {y.dtype} shape {list(y.shape)}")
    if n and int(y.min()) < 0:
        raise DatasetUnavailable(f"npz {path}: {key} holds negative labels")


def _array_inputs(x: np.ndarray, spec: SourceSpec) -> torch.Tensor | LazyInputs:
    """The inputs of an array split: a tensor, or resized/cropped on demand when the source asks."""
    import torch
    import torchvision.transforms.functional as F

    data = torch.from_numpy(x.astype("float32", copy=False))
    pre = spec.preprocess
    if pre.empty:
        _check_elements(data.shape[1:], f"npz {spec.path}")
        return data
    if data.ndim != 4:
        raise DatasetUnavailable(f"npz {spec.path}: resize and crop need images [N, C, H, W], got {list(data.shape)}")

    def load(i: int) -> torch.Tensor:
        img = data[i]
        if pre.resize is not None:
            img = F.resize(img, [pre.resize], interpolation=_interpolation(pre.interpolation), antialias=True)
        if pre.crop is not None:
            img = F.center_crop(img, [pre.crop])
        return img.clamp(0.0, 1.0).contiguous()

    shape = tuple(load(0).shape)
    _check_elements(shape, f"npz {spec.path}")
    return LazyInputs(len(data), shape, load)


def _load_npz(spec: SourceSpec) -> Dataset:
    import numpy as np
    import torch

    from smoothviz.data import Dataset

    path = Path(spec.path)
    arrays = _npz_arrays(path)
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DatasetUnavailable(f"npz {path}: no array {missing[0]!r} (found {', '.join(sorted(arrays)) or 'none'})")
    if ("x_train" in arrays) != ("y_train" in arrays):
        raise DatasetUnavailable(f"npz {path}: x_train and y_train come together")
    x, y = arrays["x"], arrays["y"]
    _check_x(x, "x", path)
    _check_y(y, len(x), "y", path)
    train_x = arrays.get("x_train", np.zeros((0, *x.shape[1:]), dtype=np.float32))
    train_y = arrays.get("y_train", np.zeros(0, dtype=np.int64))
    if len(train_x):
        _check_x(train_x, "x_train", path)
        if train_x.shape[1:] != x.shape[1:]:
            raise DatasetUnavailable(f"npz {path}: x_train has points of shape {list(train_x.shape[1:])}, "
                                     f"x of shape {list(x.shape[1:])}")
    _check_y(train_y, len(train_x), "y_train", path)
    top = int(max(y.max(initial=0), train_y.max(initial=0)))
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.dtype.kind != "U" or names.ndim != 1 or len(names) < 2:
            raise DatasetUnavailable(f"npz {path}: class_names must be at least two strings")
        class_names = [str(s) for s in names]
    else:
        count = spec.classes if spec.classes is not None else top + 1
        class_names = [str(i) for i in range(max(2, count))]
    if spec.classes is not None and spec.classes != len(class_names):
        raise DatasetUnavailable(f"npz {path}: classes={spec.classes} but class_names lists {len(class_names)}")
    if top >= len(class_names):
        raise DatasetUnavailable(f"npz {path}: label {top} is outside the {len(class_names)} classes")
    test_x = _array_inputs(x, spec)
    train = _array_inputs(train_x, spec) if len(train_x) else torch.zeros((0, *test_x.shape[1:]))
    return Dataset(
        name=spec.name, train_x=train, train_y=torch.from_numpy(train_y.astype(np.int64)),  # type: ignore[arg-type]
        test_x=test_x, test_y=torch.from_numpy(y.astype(np.int64)),  # type: ignore[arg-type]
        class_names=class_names, input_shape=tuple(int(s) for s in test_x.shape[1:]),
    )


# ----------------------------------------------------------------------------- loading


def _signature(spec: SourceSpec) -> tuple:
    """What changes when the files change: size and mtime of an npz; mtimes of a folder and its
    class folders (adding or removing an image changes its folder's mtime)."""
    path = Path(spec.path)
    try:
        if spec.kind == "npz":
            st = path.stat()
            return (st.st_size, st.st_mtime_ns)
        entries = sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(path) if e.is_dir())
        return (path.stat().st_mtime_ns, tuple(entries))
    except OSError:
        return ()


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, _signature_key: tuple) -> Dataset:
    spec = parse_source(name)
    return _load_imagefolder(spec) if spec.kind == "imagefolder" else _load_npz(spec)


def load_source(text: str) -> Dataset:
    """The Dataset a source string names (cached while its files are unchanged).

    Image folders have a test split only (their points); npz files a test split (``x``, ``y``)
    and, when they hold ``x_train``/``y_train``, a training split. DatasetUnavailable or
    InvalidArgument (one line) when the source cannot be read.
    """
    spec = parse_source(text)
    return _load_cached(spec.name, _signature(spec))


def clear_cache() -> None:
    """Forget sources loaded so far."""
    _load_cached.cache_clear()


# ----------------------------------------------------------------------------- reference sets


@dataclass(frozen=True)
class ReferenceSet:
    """Training points for a kNN sigma(x): every point decoded, their labels and class names (to
    show neighbours), and the hash of their content."""

    name: str
    x: torch.Tensor
    sha256: str
    y: torch.Tensor
    class_names: list[str]


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        yield from iter(lambda: fh.read(1 << 20), b"")


def load_reference(text: str, like: Dataset | None = None) -> ReferenceSet:
    """The points of a source, all decoded, with a SHA-256 of their files and preprocessing.

    ``like`` (the data being certified): a source string without resize or crop takes its
    preprocessing and channels, so the reference points have the data's shape (checked). The
    hash covers every file's bytes (image folders: with their relative paths and classes), so
    statistics cached under it are found again only for the same points.
    """
    import torch

    spec = parse_source(text)
    if like is not None and is_source(like.name):
        data_spec = parse_source(like.name)
        spec = spec.with_defaults(data_spec.preprocess, data_spec.channels)
    elif like is not None and spec.kind == "imagefolder" and len(like.input_shape) == 3:
        spec = spec.with_defaults(None, like.input_shape[0])
    digest = hashlib.sha256(spec.name.split(":", 1)[0].encode())
    if spec.kind == "npz":
        dataset = load_source(spec.name)
        for chunk in _file_chunks(spec.path):
            digest.update(chunk)
        x, y, names = materialize(dataset.test_x), dataset.test_y, dataset.class_names
    else:
        root = Path(spec.path)
        if not root.is_dir():
            raise DatasetUnavailable(f"imagefolder {root}: no such folder")
        classes, samples = _listing(root)
        points = []
        for path, label in samples:
            data = b"".join(_file_chunks(path))
            digest.update(f"{os.path.relpath(path, root)}\0{classes[label]}\0".encode())
            digest.update(hashlib.sha256(data).digest())
            points.append(decode_image(data, spec))
        shapes = {tuple(p.shape) for p in points}
        if len(shapes) > 1:
            raise DatasetUnavailable(f"imagefolder {root}: images decode to {len(shapes)} different shapes; "
                                     f"give a crop: imagefolder(crop=N):{root}")
        x = torch.stack(points)
        y, names = torch.tensor([label for _, label in samples], dtype=torch.int64), classes
    if like is not None and tuple(x.shape[1:]) != tuple(like.input_shape):
        raise DatasetUnavailable(f"sigma reference {spec.name}: points of shape {list(x.shape[1:])}, but the data "
                                 f"{like.name} has shape {list(like.input_shape)}")
    return ReferenceSet(spec.name, x, digest.hexdigest(), y, list(names))
