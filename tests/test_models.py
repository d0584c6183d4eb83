"""Architectures and checkpoints: weights-only loading, one-line errors, no code execution."""

from __future__ import annotations

import pickle

import pytest
import torch

from smoothviz import models
from smoothviz.data import DATASET_INFO, load_dataset
from smoothviz.errors import CheckpointError, InvalidArgument
from smoothviz.models import (
    ARCHITECTURES,
    build_model,
    check_compatible,
    check_header,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    scan_checkpoints,
)


def _meta(dataset="digits", arch="cnn-small", shape=(1, 8, 8), classes=10):
    return {"dataset": dataset, "arch": arch, "input_shape": list(shape), "num_classes": classes,
            "sigma": "constant:0.25", "sigma_params": {"kind": "constant", "sigma": 0.25},
            "r": 0.0, "epochs": 1, "clean_accuracy": 0.5, "noisy_accuracy": 0.4,
            "train_args": {"seed": 0}, "git_commit": "unknown", "created": "2026-01-01T00:00:00"}


@pytest.mark.parametrize("arch,shape", [
    ("mlp", (2,)), ("mlp", (1, 8, 8)), ("cnn-small", (1, 8, 8)), ("lenet", (1, 28, 28)),
    ("resnet20", (3, 32, 32)),
])
def test_architectures_map_inputs_to_logits(arch, shape):
    torch.manual_seed(0)
    model = build_model(arch, shape, 7).eval()
    with torch.no_grad():
        out = model(torch.rand(3, *shape))
    assert out.shape == (3, 7) and torch.isfinite(out).all()


def test_cifar_resnets_have_the_published_parameter_counts():
    # He et al. 2016, Table 6: ResNet-20 has 0.27M parameters, ResNet-110 1.7M.
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert round(count(build_model("resnet20", (3, 32, 32), 10)) / 1e6, 2) == 0.27
    assert round(count(build_model("resnet110", (3, 32, 32), 10)) / 1e6, 1) == 1.7


def test_normalisation_is_inside_the_model():
    model = build_model("mlp", (1, 8, 8), 10, mean=(0.3,), std=(0.4,))
    x = torch.rand(5, 1, 8, 8)
    assert torch.allclose(model[0](x), (x - 0.3) / 0.4)
    assert {"0.mean", "0.std"} <= set(model.state_dict())


@pytest.mark.parametrize("arch,shape,match", [
    ("lenet", (1, 8, 8), "at least 16x16"),
    ("cnn-small", (2,), "image inputs"),
    ("vgg16", (3, 32, 32), "unknown arch 'vgg16'"),
])
def test_incompatible_arch_is_an_invalid_argument(arch, shape, match):
    with pytest.raises(InvalidArgument, match=match):
        build_model(arch, shape, 10)


def test_roundtrip_keeps_outputs_and_meta_and_loads_weights_only(tmp_path):
    torch.manual_seed(1)
    model = build_model("cnn-small", (1, 8, 8), 10, mean=(0.3,), std=(0.4,)).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, _meta())
    raw = torch.load(path, weights_only=True)
    assert raw["meta"]["dataset"] == "digits" and "state_dict" in raw
    loaded, meta = load_checkpoint(path, expected_dataset="digits")
    assert not loaded.training and meta == _meta()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert torch.equal(loaded[0].mean, torch.tensor(0.3).view(1, 1, 1, 1))


def test_meta_must_be_plain_data(tmp_path):
    meta = _meta()
    meta["bad"] = object()
    with pytest.raises(InvalidArgument, match="JSON"):
        save_checkpoint(tmp_path / "m.pt", build_model("mlp", (2,), 2), meta)


def _assert_one_line(exc_info):
    assert "\n" not in str(exc_info.value) and len(str(exc_info.value)) < 400


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as info:
        load_checkpoint(tmp_path / "nope.pt")
    _assert_one_line(info)


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as info:
        load_checkpoint(path)
    _assert_one_line(info)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model("cnn-small", (1, 8, 8), 10), _meta())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    _assert_one_line(info)


def test_plain_state_dict_is_foreign(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save(build_model("cnn-small", (1, 8, 8), 10).state_dict(), path)
    with pytest.raises(CheckpointError, match="not a smoothviz checkpoint"):
        load_checkpoint(path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_malicious_pickle_is_refused_without_running_code(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"format": "smoothviz-checkpoint", "meta": _Evil(marker), "state_dict": {}}
    if writer == "pickle":
        with open(path, "wb") as fh:
            pickle.dump(payload, fh)
    else:
        torch.save(payload, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    _assert_one_line(info)
    assert not marker.exists()


def test_weights_of_another_arch_are_rejected(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model("mlp", (1, 8, 8), 10), _meta(arch="cnn-small"))
    with pytest.raises(CheckpointError, match="do not fit arch 'cnn-small'") as info:
        load_checkpoint(path)
    _assert_one_line(info)


def test_checkpoint_for_another_dataset_is_rejected(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model("cnn-small", (1, 8, 8), 10), _meta())
    with pytest.raises(CheckpointError, match="trained on 'digits', not on 'fashion-mnist'"):
        load_checkpoint(path, expected_dataset="fashion-mnist")


def test_unknown_arch_in_meta(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"format": "smoothviz-checkpoint", "version": 1,
                "meta": _meta(arch="transformer"), "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="unknown arch 'transformer'"):
        load_checkpoint(path)


@pytest.mark.parametrize("field,value,match", [
    ("input_shape", [1, 100000, 100000], "invalid input_shape"),
    ("input_shape", [1, 4096, 4096], "16,777,216 values per input, more than the 150,528 allowed"),
    ("input_shape", [True, 8, 8], "invalid input_shape"),
    ("input_shape", "1,8,8", "invalid input_shape"),
    ("input_shape", [1, -8, 8], "invalid input_shape"),
    ("num_classes", None, "invalid num_classes"),
    ("num_classes", 1, "invalid num_classes"),
])
def test_tampered_header_is_rejected_before_building(tmp_path, field, value, match):
    path = tmp_path / "m.pt"
    meta = _meta()
    meta[field] = value
    torch.save({"format": "smoothviz-checkpoint", "version": 1, "meta": meta, "state_dict": {}},
               path)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_list_checkpoints_skips_unreadable_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    save_checkpoint(a / "digits.pt", build_model("cnn-small", (1, 8, 8), 10), _meta())
    save_checkpoint(b / "moons.pt", build_model("mlp", (2,), 2),
                    _meta(dataset="toy2d-moons", arch="mlp", shape=(2,), classes=2))
    (a / "junk.pt").write_bytes(b"not a checkpoint")
    torch.save({"a": torch.zeros(1)}, a / "foreign.pt")
    (a / "digits.pt.resume").write_bytes(b"resume state")
    found = list_checkpoints([a, b, tmp_path / "missing"])
    assert [(p.name, m["dataset"]) for p, m in found] == [("digits.pt", "digits"),
                                                           ("moons.pt", "toy2d-moons")]
    assert [p.name for p, _ in list_checkpoints([a, b], dataset="toy2d-moons")] == ["moons.pt"]


def test_header_is_compared_with_the_dataset_before_building():
    digits = DATASET_INFO["digits"]
    check_header(_meta(), digits)
    with pytest.raises(CheckpointError, match="declares 5 classes, but digits has 10"):
        check_header(_meta(classes=5), digits, "m.pt")
    with pytest.raises(CheckpointError, match=r"declares input shape \[1, 28, 28\], but digits inputs have shape"):
        check_header(_meta(shape=(1, 28, 28)), digits, "m.pt")
    with pytest.raises(CheckpointError, match="trained on 'digits', not on 'mnist'"):
        check_header(_meta(), DATASET_INFO["mnist"], "m.pt")


def test_nothing_real_is_built_before_the_weights_are_known_to_fit(tmp_path, monkeypatch):
    # a tiny file whose header declares a big input: the dense layer would need 64*150*150*128 floats
    path = tmp_path / "big.pt"
    save_checkpoint(path, build_model("mlp", (2,), 10), _meta(shape=(1, 300, 300)))
    devices = []
    real = models.build_model

    def spy(*args, **kwargs):
        devices.append(str(torch.get_default_device()))
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "build_model", spy)
    with pytest.raises(CheckpointError, match="weights do not fit arch 'cnn-small' for input \\[1, 300, 300\\]"):
        load_checkpoint(path)
    assert devices == ["meta"]  # laid out on the meta device only


@pytest.mark.parametrize("change,match", [
    (lambda sd: sd.pop("1.0.bias"), "missing 1.0.bias"),
    (lambda sd: sd.update(extra=torch.zeros(1)), "unexpected extra"),
    (lambda sd: sd.update({"1.0.bias": torch.zeros(31)}), r"1.0.bias has shape \[31\]"),
    (lambda sd: sd.update({"1.0.bias": torch.zeros(32, dtype=torch.float64)}), "torch.float64"),
    (lambda sd: sd["1.0.bias"].fill_(float("inf")), "NaN or infinite values \\(1.0.bias\\)"),
])
def test_weights_must_fit_exactly_and_be_finite(tmp_path, change, match):
    state = build_model("cnn-small", (1, 8, 8), 10).state_dict()
    change(state)
    path = tmp_path / "m.pt"
    torch.save({"format": "smoothviz-checkpoint", "version": 1, "meta": _meta(), "state_dict": state}, path)
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    _assert_one_line(info)


def test_check_compatible_probes_the_built_model():
    digits = load_dataset("digits")
    model = build_model("cnn-small", (1, 8, 8), 10).eval()
    check_compatible(model, _meta(), digits)
    wide = build_model("cnn-small", (1, 8, 8), 12).eval()
    with pytest.raises(CheckpointError, match="outputs of shape \\[12\\] per input, but digits has 10 classes"):
        check_compatible(wide, _meta(), digits)
    broken = build_model("cnn-small", (1, 8, 8), 10).eval()
    broken[0].std.zero_()  # finite weights, but (x - mean) / 0 gives infinite logits
    with pytest.raises(CheckpointError, match="NaN or infinite on a probe batch"):
        check_compatible(broken, _meta(), digits)
    nan = build_model("cnn-small", (1, 8, 8), 10).eval()
    with torch.no_grad():
        nan[1][-1].bias[3] = float("nan")
    with pytest.raises(CheckpointError, match=r"NaN or infinite values \(1.8.bias\)"):
        check_compatible(nan, _meta(), digits)
    assert not model.training


def test_loading_for_a_dataset_runs_every_check(tmp_path):
    model = build_model("cnn-small", (1, 8, 8), 10)
    with torch.no_grad():
        model[1][0].weight.fill_(float("nan"))
    path = tmp_path / "nan.pt"
    save_checkpoint(path, model, _meta())
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_checkpoint(path, expected_dataset="digits")
    five = tmp_path / "five.pt"
    save_checkpoint(five, build_model("cnn-small", (1, 8, 8), 5), _meta(classes=5))
    read_checkpoint(five)  # a well-formed file ...
    with pytest.raises(CheckpointError, match="declares 5 classes"):  # ... that does not fit digits
        load_checkpoint(five, expected_dataset="digits")


def test_checkpoints_that_are_not_files(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        read_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="is a device or special file"):
        read_checkpoint("/dev/null")


def test_scan_lists_usable_checkpoints_and_says_why_others_fail(tmp_path):
    save_checkpoint(tmp_path / "a-good.pt", build_model("cnn-small", (1, 8, 8), 10), _meta())
    save_checkpoint(tmp_path / "b-five.pt", build_model("cnn-small", (1, 8, 8), 5), _meta(classes=5))
    save_checkpoint(tmp_path / "c-alien.pt", build_model("cnn-small", (1, 8, 8), 10), _meta(dataset="imagenet"))
    (tmp_path / "d-junk.pt").write_bytes(b"junk")
    save_checkpoint(tmp_path / "e-moons.pt", build_model("mlp", (2,), 2),
                    _meta(dataset="toy2d-moons", arch="mlp", shape=(2,), classes=2))
    (tmp_path / "e-moons.pt.resume").write_bytes(b"resume state")
    found, failed = scan_checkpoints([tmp_path, tmp_path / "missing"])
    assert [p.name for p, _ in found] == ["a-good.pt", "e-moons.pt"]
    reasons = dict((p.name, r) for p, r in failed)
    assert set(reasons) == {"b-five.pt", "c-alien.pt", "d-junk.pt"}
    assert reasons["b-five.pt"] == "declares 5 classes, but digits has 10"
    assert reasons["c-alien.pt"] == "was trained on unknown dataset 'imagenet'"
    assert reasons["d-junk.pt"].startswith("is not a readable checkpoint")
    assert all("\n" not in r for r in reasons.values())
    digits_only, _ = scan_checkpoints([tmp_path], dataset="digits")
    assert [p.name for p, _ in digits_only] == ["a-good.pt"]
    assert list_checkpoints([tmp_path]) == found


def test_save_checkpoint_refuses_unwritable_targets_in_one_line(tmp_path):
    model = build_model("mlp", (2,), 2)
    meta = _meta(dataset="toy2d-moons", arch="mlp", shape=(2,), classes=2)
    (tmp_path / "d.pt").mkdir()
    with pytest.raises(InvalidArgument, match="is a directory") as info:
        save_checkpoint(tmp_path / "d.pt", model, meta)
    _assert_one_line(info)
    with pytest.raises(InvalidArgument, match="device or special file"):
        save_checkpoint("/dev/full", model, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.pt"]  # no temporary file left


def test_architecture_tuple_matches_the_contract():
    assert ARCHITECTURES == ("mlp", "cnn-small", "lenet", "resnet20", "resnet110")
