"""Researchers' data: image folders and npz arrays as Datasets, lazy decoding, kNN reference sets."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision import transforms

from smoothviz import data, knn_reference
from smoothviz import data_sources as ds
from smoothviz.errors import DatasetUnavailable, InvalidArgument, SigmaSpecError


def make_folder(root: Path, sizes=((40, 30), (33, 47), (50, 50)), classes=("cat", "ant", "bee"), per_class=3,
                mode="RGB") -> Path:
    """Class folders of PNG images with random pixels (sizes cycle; classes deliberately unsorted)."""
    rng = np.random.default_rng(0)
    k = 0
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            w, h = sizes[k % len(sizes)]
            k += 1
            channels = 3 if mode == "RGB" else 1
            pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
            Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(root / name / f"img{j}.png")
    (root / "ant" / "notes.txt").write_text("not an image")
    return root


# ---------------------------------------------------------------- source strings


def test_source_strings_parse_and_canonicalise(tmp_path):
    spec = ds.parse_source(f"imagefolder(crop=224, resize=256):{tmp_path}/val/../val")
    assert spec.name == f"imagefolder(resize=256,crop=224):{tmp_path}/val"
    assert ds.canonical_source(f"npz:{tmp_path}/a.npz") == f"npz:{tmp_path}/a.npz"
    assert data.resolve_name(f"imagefolder:{tmp_path}") == f"imagefolder:{tmp_path}"
    with pytest.raises(InvalidArgument, match="unknown dataset"):  # train and import take registered names only
        data.canonical_name(f"imagefolder:{tmp_path}")
    assert ds.is_source("npz:x.npz") and ds.is_source("imagefolder(crop=3):p") and not ds.is_source("cifar10")


@pytest.mark.parametrize("text,match", [
    ("folder:/x", "unknown kind 'folder'"),
    ("imagefolder(resize=0):/x", "resize=0 is outside 1 to 8192"),
    ("imagefolder(crop=big):/x", "crop='big' is not an integer"),
    ("imagefolder(classes=3):/x", "unknown option 'classes'"),
    ("npz(channels=1):/x", "unknown option 'channels'"),
    ("imagefolder(interpolation=lanczos):/x", "interpolation must be one of"),
    ("imagefolder(crop=3:/x", "options must be written"),
    ("npz:", "no path"),
])
def test_bad_source_strings_are_one_line(text, match):
    with pytest.raises(InvalidArgument, match=match) as err:
        ds.parse_source(text)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- image folders


def test_imagefolder_order_and_pixels_equal_torchvision(tmp_path):
    root = make_folder(tmp_path / "val")
    spec = f"imagefolder(resize=32,crop=28):{root}"
    dataset = data.load_dataset(spec)
    reference = torchvision.datasets.ImageFolder(str(root), transforms.Compose(
        [transforms.Resize(32), transforms.CenterCrop(28), transforms.ToTensor()]))
    assert dataset.class_names == reference.classes == ["ant", "bee", "cat"]
    assert dataset.test_y.tolist() == [label for _, label in reference.samples]
    assert dataset.input_shape == (3, 28, 28) and dataset.test_x.shape == (9, 3, 28, 28)
    for i in (0, 4, 8):
        assert torch.equal(dataset.test_x[i], reference[i][0])
    assert len(dataset.train_x) == 0


def test_imagefolder_decodes_only_what_is_indexed(tmp_path):
    root = make_folder(tmp_path / "val", per_class=20)
    dataset = ds.load_source(f"imagefolder(crop=16):{root}")
    xs = dataset.test_x
    assert len(xs) == 60 and xs.decoded == 0  # listing and shape cost no decoding
    batch = xs[torch.tensor([5, 41])]
    assert batch.shape == (2, 3, 16, 16) and xs.decoded == 2
    xs[[41, 5]]
    assert xs.decoded == 2  # decoded points are kept
    assert ds.load_source(f"imagefolder(crop=16):{root}") is dataset  # unchanged files: the same object


def test_imagefolder_grey_and_uncropped(tmp_path):
    root = make_folder(tmp_path / "g", sizes=((10, 12),), mode="L")
    dataset = ds.load_source(f"imagefolder(channels=1):{root}")
    assert dataset.input_shape == (1, 12, 10)
    pixels = np.asarray(Image.open(root / "ant" / "img0.png"), dtype=np.float32) / 255
    assert torch.equal(dataset.test_x[0][0], torch.from_numpy(pixels))


def test_imagefolder_of_mixed_sizes_needs_a_crop(tmp_path):
    root = make_folder(tmp_path / "mixed")
    dataset = ds.load_source(f"imagefolder:{root}")
    with pytest.raises(DatasetUnavailable, match=r"decodes to shape .* give a crop: imagefolder\(crop=N\)") as err:
        dataset.test_x[[0, 1]]
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("setup,match", [
    (lambda r: None, "no such folder"),
    (lambda r: r.mkdir(), "no class folders"),
    (lambda r: (r / "a").mkdir(parents=True), "no images in its 1 class folders"),
])
def test_imagefolder_errors(tmp_path, setup, match):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DatasetUnavailable, match=match):
        ds.load_source(f"imagefolder:{root}")


def test_a_disguised_file_is_not_decoded(tmp_path):
    root = make_folder(tmp_path / "val", sizes=((8, 8),))
    (root / "ant" / "img0.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n")
    dataset = ds.load_source(f"imagefolder(crop=8):{root}")
    with pytest.raises(DatasetUnavailable, match="cannot decode .*img0.png: not an image of the formats read"):
        dataset.test_x[0]


# ---------------------------------------------------------------- npz


def write_npz(path: Path, **arrays) -> str:
    rng = np.random.default_rng(1)
    defaults = {"x": rng.random((5, 3, 4, 4)).astype(np.float32), "y": np.array([0, 1, 2, 1, 0])}
    np.savez(path, **{**defaults, **arrays})
    return f"npz:{path}"


def test_npz_loads_splits_and_names(tmp_path):
    rng = np.random.default_rng(2)
    train = rng.random((7, 3, 4, 4)).astype(np.float32)
    source = write_npz(tmp_path / "a.npz", x_train=train, y_train=np.arange(7) % 3,
                       class_names=np.array(["a", "b", "c"]))
    dataset = data.load_dataset(source)
    assert dataset.class_names == ["a", "b", "c"] and dataset.input_shape == (3, 4, 4)
    assert dataset.test_x.shape == (5, 3, 4, 4) and torch.equal(dataset.train_x, torch.from_numpy(train))
    assert dataset.name == ds.canonical_source(source)


def test_npz_classes_option_and_resize(tmp_path):
    source = write_npz(tmp_path / "a.npz")
    assert ds.load_source(source).num_classes == 3
    assert ds.load_source(source.replace("npz:", "npz(classes=10):")).num_classes == 10
    resized = ds.load_source(source.replace("npz:", "npz(resize=8,crop=6):"))
    assert resized.input_shape == (3, 6, 6) and resized.test_x[[0, 2]].shape == (2, 3, 6, 6)


@pytest.mark.parametrize("arrays,match", [
    ({"x": np.full((5, 4), 1.5, np.float32)}, r"x values span \[1.5, 1.5\]; expected \[0, 1\]"),
    ({"x": np.zeros((5, 4), np.uint8)}, "dtype uint8.*divide uint8 images by 255"),
    ({"x": np.full((5, 4), np.nan, np.float32)}, "NaN or infinite"),
    ({"y": np.array([0, 1])}, "y must be 5 integer labels"),
    ({"y": np.array([0.0, 1, 2, 1, 0])}, "y must be 5 integer labels"),
    ({"y": np.array([0, -1, 2, 1, 0])}, "negative labels"),
    ({"class_names": np.array(["a", "b"])}, "label 2 is outside the 2 classes"),
    ({"x_train": np.zeros((2, 3, 4, 4), np.float32)}, "x_train and y_train come together"),
])
def test_npz_errors_are_one_line(tmp_path, arrays, match):
    source = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetUnavailable, match=match) as err:
        ds.load_source(source)
    assert "\n" not in str(err.value)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    raw = tmp_path / "evil.npz"
    raw.write_bytes(pickle.dumps({"x": _Payload(marker)}))
    with pytest.raises(DatasetUnavailable, match="not an npz archive"):
        ds.load_source(f"npz:{raw}")
    inside = tmp_path / "inside.npz"
    objects = np.empty(5, dtype=object)
    objects[:] = [_Payload(marker)] * 5
    np.savez(inside, x=np.zeros((5, 2), np.float32), y=objects)
    with pytest.raises(DatasetUnavailable, match="holds Python objects"):
        ds.load_source(f"npz:{inside}")
    assert not marker.exists()


# ---------------------------------------------------------------- kNN reference sets


def test_reference_hash_follows_content(tmp_path):
    root = make_folder(tmp_path / "ref", sizes=((8, 8),))
    first = ds.load_reference(f"imagefolder:{root}")
    assert first.x.shape == (9, 3, 8, 8) and ds.load_reference(f"imagefolder:{root}").sha256 == first.sha256
    moved = tmp_path / "elsewhere"
    root.rename(moved)
    assert ds.load_reference(f"imagefolder:{moved}").sha256 == first.sha256  # content, not the path
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(moved / "cat" / "img0.png")
    assert ds.load_reference(f"imagefolder:{moved}").sha256 != first.sha256


def test_reference_takes_the_datas_preprocessing(tmp_path):
    make_folder(tmp_path / "val")
    make_folder(tmp_path / "train")
    dataset = ds.load_source(f"imagefolder(resize=20,crop=16):{tmp_path / 'val'}")
    reference = ds.load_reference(f"imagefolder:{tmp_path / 'train'}", like=dataset)
    assert reference.x.shape == (9, 3, 16, 16)
    with pytest.raises(DatasetUnavailable, match=r"points of shape \[3, 8, 8\], but the data"):
        ds.load_reference(f"imagefolder(crop=8):{tmp_path / 'train'}", like=dataset)


def test_knn_m_is_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("SMOOTHVIZ_CACHE", str(tmp_path / "cache"))
    make_folder(tmp_path / "val", sizes=((8, 8),))
    make_folder(tmp_path / "train", sizes=((8, 8),), per_class=4)
    dataset = ds.load_source(f"imagefolder:{tmp_path / 'val'}")
    reference = f"imagefolder:{tmp_path / 'train'}"
    first = knn_reference.build_run_sigma("knn:0.25,0.1,3", dataset, reference, "cpu")
    assert not (tmp_path / "cache").exists()  # building writes nothing
    assert knn_reference.remember_statistics(first) and not knn_reference.remember_statistics(first)
    files = list((tmp_path / "cache").glob("knn-*.json"))
    assert len(files) == 1 and first.m > 0
    files[0].write_text(files[0].read_text().replace(repr(first.m), "1.5"))
    assert knn_reference.build_run_sigma("knn:0.25,0.1,3", dataset, reference, "cpu").m == 1.5  # read from the cache
    assert knn_reference.build_run_sigma("knn:0.25,0.1,2", dataset, reference, "cpu").m != 1.5  # other k: computed
    record = knn_reference.reference_record(reference, dataset)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "ant" / "img0.png")
    with pytest.raises(DatasetUnavailable, match="changed since the run was recorded"):
        knn_reference.build_run_sigma("knn:0.25,0.1,3", dataset, record, "cpu")


def test_knn_without_training_points_asks_for_a_reference(tmp_path):
    dataset = ds.load_source(f"imagefolder:{make_folder(tmp_path / 'val', sizes=((8, 8),))}")
    with pytest.raises(SigmaSpecError, match="no training points.*--sigma-reference"):
        knn_reference.build_run_sigma("knn:0.25,0.1,3", dataset, None, "cpu")
    assert knn_reference.build_run_sigma("constant:0.25", dataset, None, "cpu").sigma == 0.25
