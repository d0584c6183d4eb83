"""Dataset registry: every dataset as float tensors in [0, 1] (no normalisation), long labels.

Models normalise inside (``smoothviz.models``), so Gaussian noise is added in pixel space, as in
Cohen et al. 2019. Image files are read in torchvision's on-disk formats (IDX for (Fashion-)MNIST,
the python pickles of CIFAR-10) by this module itself; torchvision is used only to download them.
The registry (``DATASET_INFO``) needs no torch, so argument definitions can list the datasets
without loading it.

Besides the registered names, a dataset may be a source string naming researchers' own files,
``imagefolder:PATH`` or ``npz:FILE`` (``smoothviz.data_sources``): ``resolve_name`` and
``load_dataset`` accept them, and their canonical form is the dataset name the store records.
``canonical_name`` accepts registered names only, for the verbs that need one (train, import).
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from smoothviz.errors import DatasetUnavailable, InvalidArgument

if TYPE_CHECKING:
    import torch

DEFAULT_DATASET = "digits"

# Where the Debian package ``dataset-fashion-mnist`` installs the four IDX gz files.
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"


@dataclass(frozen=True)
class DatasetInfo:
    """What the UI and model builder need to know about a dataset without loading it."""

    name: str
    description: str
    input_shape: tuple[int, ...]
    num_classes: int
    default_arch: str
    embedded: bool
    mean: tuple[float, ...] = field(default=(0.5,))
    std: tuple[float, ...] = field(default=(0.5,))


@dataclass
class Dataset:
    """A loaded dataset: images/points in [0, 1] of shape [B, *input_shape], long labels.

    Instances are cached and shared by ``load_dataset``: treat the tensors as read-only. For a
    file-backed source (an image folder) ``train_x``/``test_x`` are ``data_sources.LazyInputs``,
    which decode the points they are indexed with; ``data_sources.materialize`` gives a tensor.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    input_shape: tuple[int, ...]

    @property
    def dim(self) -> int:
        """Input dimension N (the degrees of freedom of the certificate)."""
        return int(np.prod(self.input_shape))

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)


_DIGIT_NAMES = [str(i) for i in range(10)]
_FASHION_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_CIFAR_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]

DATASET_INFO: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        "digits", "scikit-learn 8x8 handwritten digits (embedded, 1437 train / 360 test)",
        (1, 8, 8), 10, "cnn-small", True, (0.3053,), (0.3760,),
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", "Fashion-MNIST 28x28 grey clothing images (60000 / 10000)",
        (1, 28, 28), 10, "lenet", False, (0.2860,), (0.3530,),
    ),
    "mnist": DatasetInfo(
        "mnist", "MNIST 28x28 handwritten digits (60000 / 10000)",
        (1, 28, 28), 10, "lenet", False, (0.1307,), (0.3081,),
    ),
    "cifar10": DatasetInfo(
        "cifar10", "CIFAR-10 32x32 colour images (50000 / 10000)",
        (3, 32, 32), 10, "resnet20", False, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    ),
    "toy2d-moons": DatasetInfo(
        "toy2d-moons", "two interleaving half-moons in [0,1]^2 (1500 / 500)",
        (2,), 2, "mlp", True, (0.5,), (0.25,),
    ),
    "toy2d-circles": DatasetInfo(
        "toy2d-circles", "two concentric circles in [0,1]^2 (1500 / 500)",
        (2,), 2, "mlp", True, (0.5,), (0.25,),
    ),
    "toy2d-blobs": DatasetInfo(
        "toy2d-blobs", "three Gaussian blobs in [0,1]^2 (1500 / 500)",
        (2,), 3, "mlp", True, (0.5,), (0.25,),
    ),
}
_ALIASES = {"toy2d": "toy2d-moons"}


def dataset_names() -> list[str]:
    """Canonical dataset names (the alias ``toy2d`` = ``toy2d-moons`` is accepted but not listed)."""
    return list(DATASET_INFO)


def canonical_name(name: str) -> str:
    """Resolve aliases; InvalidArgument for a name that is not a registered dataset."""
    name = _ALIASES.get(name, name)
    if name not in DATASET_INFO:
        raise InvalidArgument(f"unknown dataset {name!r}; choose from {', '.join(dataset_names())}")
    return name


def resolve_name(name: str) -> str:
    """A registered dataset's canonical name, or a source string's canonical form
    (``imagefolder:PATH``, ``npz:FILE``: absolute path, ordered options); InvalidArgument otherwise.
    Needs no torch."""
    from smoothviz import data_sources

    if data_sources.is_source(name):
        return data_sources.canonical_source(name)
    try:
        return canonical_name(name)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{exc}, or name your files as imagefolder:PATH or npz:FILE") from None


def default_root() -> Path:
    """Data root: environment variable SMOOTHVIZ_DATA, else ./data."""
    return Path(os.environ.get("SMOOTHVIZ_DATA") or "data")


def load_dataset(name: str, root: str | Path | None = None, download: bool = True) -> Dataset:
    """Load a dataset by name (cached in-process; decoding the large ones takes seconds).

    ``root`` is where mnist/fashion-mnist/cifar10 files live in torchvision's layout; when they
    are missing and ``download`` is true, torchvision downloads them there. Raises
    DatasetUnavailable (one line naming the directory and files) when that is impossible. A
    source string (``imagefolder:PATH``, ``npz:FILE``) loads through ``data_sources.load_source``.
    """
    name = resolve_name(name)
    if name not in DATASET_INFO:
        from smoothviz.data_sources import load_source

        return load_source(name)
    if DATASET_INFO[name].embedded:
        return _load_cached(name, "", False)
    root_path = Path(root) if root is not None else default_root()
    return _load_cached(name, str(root_path.expanduser().resolve()), bool(download))


def clear_cache() -> None:
    """Forget datasets loaded so far (e.g. after files on disk changed), sources included."""
    from smoothviz.data_sources import clear_cache as clear_sources

    _load_cached.cache_clear()
    clear_sources()


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, root: str, download: bool) -> Dataset:
    loaders: dict[str, Callable[[], Dataset]] = {
        "digits": _load_digits,
        "fashion-mnist": lambda: _load_idx_dataset("fashion-mnist", Path(root), download),
        "mnist": lambda: _load_idx_dataset("mnist", Path(root), download),
        "cifar10": lambda: _load_cifar10(Path(root), download),
        "toy2d-moons": lambda: _load_toy2d("moons"),
        "toy2d-circles": lambda: _load_toy2d("circles"),
        "toy2d-blobs": lambda: _load_toy2d("blobs"),
    }
    return loaders[name]()


def _make(name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
          test_y: np.ndarray, class_names: list[str]) -> Dataset:
    import torch

    shape = DATASET_INFO[name].input_shape
    return Dataset(
        name=name,
        train_x=torch.as_tensor(np.ascontiguousarray(train_x), dtype=torch.float32).reshape(-1, *shape),
        train_y=torch.from_numpy(np.array(train_y, dtype=np.int64)),
        test_x=torch.as_tensor(np.ascontiguousarray(test_x), dtype=torch.float32).reshape(-1, *shape),
        test_y=torch.from_numpy(np.array(test_y, dtype=np.int64)),
        class_names=list(class_names),
        input_shape=shape,
    )


def _load_digits() -> Dataset:
    """sklearn digits, pixel values 0..16 scaled to [0, 1]; stratified split, 360 test, seed 0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    tr_x, te_x, tr_y, te_y = train_test_split(x, y, test_size=360, stratify=y, random_state=0)
    return _make("digits", tr_x, tr_y, te_x, te_y, _DIGIT_NAMES)


def _load_toy2d(kind: str) -> Dataset:
    """Seeded sklearn toy sets (2000 points), min-max scaled into [0.05, 0.95]^2, 1500/500 split."""
    from sklearn import datasets as skd

    n = 2000
    if kind == "moons":
        x, y = skd.make_moons(n_samples=n, noise=0.15, random_state=0)
    elif kind == "circles":
        x, y = skd.make_circles(n_samples=n, noise=0.08, factor=0.5, random_state=0)
    else:
        x, y = skd.make_blobs(n_samples=n, centers=3, cluster_std=1.2, random_state=0)
    lo, hi = x.min(axis=0), x.max(axis=0)
    x = 0.05 + 0.9 * (x - lo) / (hi - lo)
    names = [f"class {c}" for c in range(int(y.max()) + 1)]
    return _make(f"toy2d-{kind}", x[:1500], y[:1500], x[1500:], y[1500:], names)


# ---------------------------------------------------------------- IDX ((Fashion-)MNIST)

def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip-compressed when the name ends in .gz).

    Format (LeCun's MNIST page): 2 zero bytes, type byte 0x08 (ubyte), number of dims, then one
    big-endian uint32 per dim, then the data.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DatasetUnavailable(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 3:
        raise DatasetUnavailable(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetUnavailable(f"{path} is truncated (IDX header)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != int(np.prod(shape)):
        raise DatasetUnavailable(
            f"{path} is truncated or corrupt: header says {shape}, {len(raw) - header} bytes follow"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _idx_dirs(name: str, root: Path) -> list[Path]:
    sub = "FashionMNIST" if name == "fashion-mnist" else "MNIST"
    dirs = [root / sub / "raw"]
    if name == "fashion-mnist":
        dirs.append(FASHION_SYSTEM_DIR)
    return dirs


def _find_idx(directory: Path) -> dict[str, Path] | None:
    """The four IDX files in ``directory`` (raw or .gz), or None when any is missing."""
    found = {}
    for key, base in _IDX_FILES.items():
        for candidate in (directory / base, directory / f"{base}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def _download(name: str, root: Path) -> None:
    """Download through torchvision (which checks the md5 of the real files)."""
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    root.mkdir(parents=True, exist_ok=True)
    cls(str(root), train=False, download=True)


def _exception_text(exc: BaseException) -> str:
    """The first non-blank line of an exception's message, else its type's name (never empty)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__


def _try_download(name: str, root: Path, download: bool) -> str:
    """Attempt a download; return why the files are still unavailable ('' on success).

    A failed download leaves no folder behind that it created: when ``root`` did not exist
    before, it is removed again.
    """
    if not download:
        return "downloading is switched off"
    existed = root.exists()
    try:
        _download(name, root)
    except Exception as exc:  # network, disk and integrity failures all mean "unavailable"
        if not existed:
            shutil.rmtree(root, ignore_errors=True)
        return f"download failed: {_exception_text(exc)}"
    return ""


def _load_idx_dataset(name: str, root: Path, download: bool) -> Dataset:
    dirs = _idx_dirs(name, root)
    files = next((f for f in map(_find_idx, dirs) if f is not None), None)
    if files is None:
        reason = _try_download(name, root, download)
        files = _find_idx(dirs[0])
        if files is None:
            names = ", ".join(f"{b}.gz" for b in _IDX_FILES.values())
            raise DatasetUnavailable(
                f"{name} not found ({reason or 'download left no files'}); put {names} "
                f"into {dirs[0]}" + (f" (or install dataset-fashion-mnist into {dirs[1]})"
                                     if len(dirs) > 1 else "")
                + " or set SMOOTHVIZ_DATA to a root that has them"
            )
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or x.shape[1:] != (28, 28):
            raise DatasetUnavailable(
                f"{name} {split} files in {files[split + '_x'].parent} have shapes {x.shape} and "
                f"{y.shape}; expected [n, 28, 28] images and [n] labels"
            )
        if y.size and y.max() >= 10:
            raise DatasetUnavailable(f"{name} {split} labels in {files[split + '_y']} exceed 9")
    names = _FASHION_NAMES if name == "fashion-mnist" else _DIGIT_NAMES
    return _make(
        name,
        arrays["train_x"].astype(np.float32) / 255.0, arrays["train_y"],
        arrays["test_x"].astype(np.float32) / 255.0, arrays["test_y"],
        names,
    )


# ---------------------------------------------------------------- CIFAR-10 python pickles

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays: a tampered file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 (pickle protocol)
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: (uint8 images [n, 3, 32, 32], int64 labels [n])."""
    try:
        with open(path, "rb") as fh:
            entry = _ArrayUnpickler(fh, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError,
            AttributeError, ImportError, IndexError, KeyError) as exc:
        raise DatasetUnavailable(f"cannot read CIFAR-10 batch {path}: {exc}") from None
    if not isinstance(entry, dict):
        raise DatasetUnavailable(f"{path} is not a CIFAR-10 batch (no dict inside)")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    data, labels = entry.get("data"), entry.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072 or labels is None or len(labels) != len(data):
        raise DatasetUnavailable(
            f"{path} is not a CIFAR-10 batch: expected 'data' uint8 [n, 3072] and n 'labels'"
        )
    y = np.asarray(labels, dtype=np.int64)
    if y.size and (y.min() < 0 or y.max() >= 10):
        raise DatasetUnavailable(f"{path} has labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), y


def _load_cifar10(root: Path, download: bool) -> Dataset:
    directory = root / _CIFAR_DIR
    needed = [directory / f for f in (*_CIFAR_TRAIN, _CIFAR_TEST)]
    if not all(p.is_file() for p in needed):
        reason = _try_download("cifar10", root, download)
        if not all(p.is_file() for p in needed):
            raise DatasetUnavailable(
                f"cifar10 not found ({reason or 'download left no files'}); put data_batch_1 ... "
                f"data_batch_5 and test_batch (CIFAR-10 python version, cifar-10-python.tar.gz "
                f"extracted) into {directory} or set SMOOTHVIZ_DATA to a root that has them"
            )
    train = [read_cifar_batch(directory / f) for f in _CIFAR_TRAIN]
    test_x, test_y = read_cifar_batch(directory / _CIFAR_TEST)
    train_x = np.concatenate([t[0] for t in train]).astype(np.float32) / 255.0
    train_y = np.concatenate([t[1] for t in train])
    return _make("cifar10", train_x, train_y, test_x.astype(np.float32) / 255.0, test_y, _CIFAR_NAMES)
