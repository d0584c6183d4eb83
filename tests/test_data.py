"""Dataset registry: embedded sets, torchvision on-disk formats read through the real loader,
offline errors, and refusal of tampered CIFAR pickles."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from smoothviz import data
from smoothviz.data import DATASET_INFO, dataset_names, load_dataset
from smoothviz.errors import DatasetUnavailable, InvalidArgument


@pytest.fixture(autouse=True)
def _fresh_cache():
    data.clear_cache()
    yield
    data.clear_cache()


def _idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array (LeCun's format: 0, 0, 0x08, ndim, big-endian dims)."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx_set(directory, n_train=6, n_test=4, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        if compress:
            with gzip.open(directory / f"{name}.gz", "wb") as fh:
                fh.write(_idx_bytes(arr))
        else:
            (directory / name).write_bytes(_idx_bytes(arr))
    return arrays


def test_registry_lists_every_dataset_with_info():
    assert dataset_names() == [
        "digits", "fashion-mnist", "mnist", "cifar10", "toy2d-moons", "toy2d-circles", "toy2d-blobs"
    ]
    assert data.DEFAULT_DATASET == "digits" and DATASET_INFO["digits"].embedded
    for info in DATASET_INFO.values():
        channels = info.input_shape[0] if len(info.input_shape) == 3 else 1
        assert len(info.mean) == channels and len(info.std) == channels


def test_digits_split_is_fixed_stratified_and_in_unit_interval():
    ds = load_dataset("digits")
    assert ds.train_x.shape == (1437, 1, 8, 8) and ds.test_x.shape == (360, 1, 8, 8)
    assert ds.dim == 64 and ds.num_classes == 10 and ds.input_shape == (1, 8, 8)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.long
    both = torch.cat([ds.train_x, ds.test_x])
    assert both.min() >= 0 and both.max() <= 1
    # sklearn's digits hold integers 0..16, so every value is a multiple of 1/16.
    assert torch.allclose(both * 16, torch.round(both * 16), atol=1e-6)
    counts = torch.bincount(ds.test_y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 360 / 10 per class
    data.clear_cache()
    again = load_dataset("digits")
    assert again is not ds and torch.equal(again.test_x, ds.test_x)


def test_loading_is_cached_in_process():
    assert load_dataset("digits") is load_dataset("digits")


@pytest.mark.parametrize("name,classes", [("toy2d-moons", 2), ("toy2d-circles", 2),
                                          ("toy2d-blobs", 3)])
def test_toy2d_sets(name, classes):
    ds = load_dataset(name)
    assert ds.input_shape == (2,) and ds.dim == 2 and ds.num_classes == classes
    assert ds.train_x.shape == (1500, 2) and ds.test_x.shape == (500, 2)
    assert ds.train_x.min() >= 0 and ds.train_x.max() <= 1
    assert set(ds.train_y.tolist()) == set(range(classes))


def test_toy2d_alias_is_moons():
    assert torch.equal(load_dataset("toy2d").train_x, load_dataset("toy2d-moons").train_x)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(InvalidArgument, match="unknown dataset 'imagenet'.*digits"):
        load_dataset("imagenet")


def test_source_names_resolve_without_torch(tmp_path):
    """Argument handling may canonicalise imagefolder:/npz: names; that must not load torch."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from smoothviz.data import resolve_name; "
            f"print(resolve_name('npz:{tmp_path}/a/../b.npz')); print('torch' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         timeout=120, check=False).stdout.split()
    assert out == [f"npz:{tmp_path}/b.npz", "False"]


def test_source_strings_load_through_load_dataset(tmp_path):
    np.savez(tmp_path / "p.npz", x=np.full((3, 2), 0.5, np.float32), y=np.array([0, 1, 1]))
    loaded = load_dataset(f"npz:{tmp_path}/p.npz")
    assert loaded.name == f"npz:{tmp_path}/p.npz" and loaded.num_classes == 2 and loaded.input_shape == (2,)
    assert load_dataset(f"npz:{tmp_path}/p.npz") is loaded
    data.clear_cache()
    assert load_dataset(f"npz:{tmp_path}/p.npz") is not loaded  # clear_cache forgets sources too


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_idx_files_load_through_the_real_reader(tmp_path, compress):
    arrays = _write_idx_set(tmp_path / "MNIST" / "raw", compress=compress)
    ds = load_dataset("mnist", root=tmp_path, download=False)
    assert ds.train_x.shape == (6, 1, 28, 28) and ds.test_x.shape == (4, 1, 28, 28)
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.float32) / 255.0)
    assert torch.equal(ds.train_x[:, 0], expected)
    assert ds.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert ds.class_names == [str(i) for i in range(10)]


def test_fashion_root_files_take_precedence_over_system_dir(tmp_path, monkeypatch):
    system = tmp_path / "system"
    _write_idx_set(system, n_train=3, seed=1)
    monkeypatch.setattr(data, "FASHION_SYSTEM_DIR", system)
    arrays = _write_idx_set(tmp_path / "root" / "FashionMNIST" / "raw", n_train=5, seed=2)
    ds = load_dataset("fashion-mnist", root=tmp_path / "root", download=False)
    assert len(ds.train_x) == 5
    assert ds.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"


def test_fashion_falls_back_to_the_debian_package_dir(tmp_path, monkeypatch):
    system = tmp_path / "system"
    arrays = _write_idx_set(system, n_train=3, seed=1)
    monkeypatch.setattr(data, "FASHION_SYSTEM_DIR", system)
    monkeypatch.setattr(data, "_download", lambda name, root: pytest.fail("must not download"))
    ds = load_dataset("fashion-mnist", root=tmp_path / "empty", download=True)
    assert ds.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()


def test_truncated_idx_file_is_reported(tmp_path):
    directory = tmp_path / "MNIST" / "raw"
    _write_idx_set(directory)
    path = directory / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DatasetUnavailable, match="truncated or corrupt"):
        load_dataset("mnist", root=tmp_path, download=False)


def test_offline_mnist_error_names_directory_and_files(tmp_path, monkeypatch):
    calls = []

    def offline(name, root):
        calls.append((name, root))
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(data, "_download", offline)
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset("mnist", root=tmp_path, download=True)
    message = str(info.value)
    assert calls == [("mnist", tmp_path.resolve())]
    assert "\n" not in message and "Network is unreachable" in message
    assert str(tmp_path.resolve() / "MNIST" / "raw") in message
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert name in message


def test_no_download_means_no_download_attempt(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_download", lambda name, root: pytest.fail("must not download"))
    with pytest.raises(DatasetUnavailable, match="cifar-10-batches-py"):
        load_dataset("cifar10", root=tmp_path, download=False)


def test_offline_cifar_error_names_the_batches(tmp_path, monkeypatch):
    def offline(name, root):
        raise RuntimeError("Error downloading cifar-10-python.tar.gz")

    monkeypatch.setattr(data, "_download", offline)
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset("cifar10", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path.resolve() / "cifar-10-batches-py") in message
    assert "data_batch_1" in message and "data_batch_5" in message and "test_batch" in message


def _write_cifar(directory, n=3, bytes_keys=False):
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        arr = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        entry = {"data": arr, "labels": labels, "batch_label": name}
        if bytes_keys:  # the original files were written by Python 2: byte-string keys
            entry = {k.encode(): v for k, v in entry.items()}
        with open(directory / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2 if bytes_keys else pickle.HIGHEST_PROTOCOL)
        batches[name] = (arr, labels)
    return batches


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar_pickles_load_with_channel_layout(tmp_path, bytes_keys):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py", bytes_keys=bytes_keys)
    ds = load_dataset("cifar10", root=tmp_path, download=False)
    assert ds.train_x.shape == (15, 3, 32, 32) and ds.test_x.shape == (3, 3, 32, 32)
    arr, labels = batches["data_batch_1"]
    # CIFAR rows: 1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major.
    assert ds.train_x[0, 0, 1, 2] == pytest.approx(arr[0, 1 * 32 + 2] / 255.0)
    assert ds.train_x[0, 2, 31, 31] == pytest.approx(arr[0, 3071] / 255.0)
    assert ds.train_y[:3].tolist() == labels
    assert ds.test_y.tolist() == batches["test_batch"][1]
    assert ds.class_names[0] == "airplane" and ds.num_classes == 10


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_tampered_cifar_pickle_is_refused_without_running_code(tmp_path):
    directory = tmp_path / "cifar-10-batches-py"
    _write_cifar(directory)
    marker = tmp_path / "pwned"
    with open(directory / "data_batch_3", "wb") as fh:
        pickle.dump({"data": _Evil(marker), "labels": [0]}, fh)
    with pytest.raises(DatasetUnavailable, match="data_batch_3.*refusing"):
        load_dataset("cifar10", root=tmp_path, download=False)
    assert not marker.exists()


def test_cifar_batch_with_wrong_shape_is_reported(tmp_path):
    directory = tmp_path / "cifar-10-batches-py"
    _write_cifar(directory)
    with open(directory / "test_batch", "wb") as fh:
        pickle.dump({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, fh)
    with pytest.raises(DatasetUnavailable, match="test_batch is not a CIFAR-10 batch"):
        load_dataset("cifar10", root=tmp_path, download=False)


def test_installed_fashion_mnist_has_the_published_sizes():
    if not data.FASHION_SYSTEM_DIR.is_dir():
        pytest.skip(f"dataset-fashion-mnist is not installed ({data.FASHION_SYSTEM_DIR} missing)")
    ds = load_dataset("fashion-mnist", root="/nonexistent-root", download=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    # Fashion-MNIST is balanced: 6000 training and 1000 test images per class.
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
    assert ds.train_x.min() == 0 and ds.train_x.max() == 1


@pytest.mark.parametrize("error", [RuntimeError(""), OSError("\n  \n"), ValueError("\nchecksum mismatch")])
def test_offline_message_always_has_a_cause_the_folder_and_the_files(tmp_path, monkeypatch, error):
    def offline(name, root):
        root.mkdir(parents=True)
        (root / "MNIST").mkdir()  # a partial download
        raise error

    monkeypatch.setattr(data, "_download", offline)
    root = tmp_path / "fresh-root"
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset("mnist", root=root)
    message = str(info.value)
    cause = message.split("download failed: ", 1)[1].split(")", 1)[0]
    assert cause.strip() and cause == (str(error).strip() or type(error).__name__)
    assert str(root.resolve() / "MNIST" / "raw") in message and "train-images-idx3-ubyte.gz" in message
    assert not root.exists()  # the folder the failed download created is gone again


def test_a_failed_download_keeps_a_root_that_existed(tmp_path, monkeypatch):
    (tmp_path / "mine.txt").write_text("user file")

    def offline(name, root):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(data, "_download", offline)
    with pytest.raises(DatasetUnavailable, match="Network is unreachable"):
        load_dataset("cifar10", root=tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "user file"


def test_no_download_names_the_cause(tmp_path):
    with pytest.raises(DatasetUnavailable, match=r"mnist not found \(downloading is switched off\); put"):
        load_dataset("mnist", root=tmp_path, download=False)


def test_the_registry_needs_no_torch():
    import subprocess
    import sys

    code = "import sys, smoothviz.data as d; d.DATASET_INFO['digits']; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
