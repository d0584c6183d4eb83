"""Foreign models: reference-code, MACER, torchvision, TorchScript/export archives, user code.

The reference code's architecture is transcribed here independently (from locuslab/smoothing
``code/archs/cifar_resnet.py``, ``code/datasets.py`` and ``code/architectures.py``, written the
way that code writes it), so the loaded models are compared with an implementation that does not
share smoothviz's.
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

import pytest
import torch
import torchvision

from smoothviz import model_sources as ms
from smoothviz.certify import certify_points, prepare_run
from smoothviz.data_sources import Preprocess, load_source
from smoothviz.errors import CheckpointError, InvalidArgument
from smoothviz.sigma import Constant

# ---------------------------------------------------------------- the reference code, transcribed


def conv3x3(in_planes, out_planes, stride=1):
    return torch.nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class TBasicBlock(torch.nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = torch.nn.BatchNorm2d(planes)
        self.relu = torch.nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = torch.nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        residual = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        out = self.relu(out)
        return out


class TResNet(torch.nn.Module):
    def __init__(self, depth, num_classes=1000, pool_stride=None):
        super().__init__()
        n = (depth - 2) // 6
        self.inplanes = 16
        self.conv1 = torch.nn.Conv2d(3, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(16)
        self.relu = torch.nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(TBasicBlock, 16, n)
        self.layer2 = self._make_layer(TBasicBlock, 32, n, stride=2)
        self.layer3 = self._make_layer(TBasicBlock, 64, n, stride=2)
        self.avgpool = torch.nn.AvgPool2d(8) if pool_stride is None else torch.nn.AvgPool2d(8, stride=pool_stride)
        self.fc = torch.nn.Linear(64 * TBasicBlock.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, torch.nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2. / k))

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = torch.nn.Sequential(
                torch.nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                torch.nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return torch.nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        x = self.fc(x)
        return x


class TNormalizeLayer(torch.nn.Module):
    """The reference NormalizeLayer: means and sds are plain tensors (not in the state dict)."""

    def __init__(self, means, sds):
        super().__init__()
        self.means = torch.tensor(means)
        self.sds = torch.tensor(sds)

    def forward(self, input):
        (batch_size, num_channels, height, width) = input.shape
        means = self.means.repeat((batch_size, height, width, 1)).permute(0, 3, 1, 2)
        sds = self.sds.repeat((batch_size, height, width, 1)).permute(0, 3, 1, 2)
        return (input - means) / sds


_CIFAR10 = ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])
_IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def reference_architecture(arch: str) -> torch.nn.Module:
    """get_architecture(arch, dataset) of the reference code, on the CPU."""
    if arch == "resnet50":
        model = torch.nn.DataParallel(torchvision.models.resnet50(weights=None))
        return torch.nn.Sequential(TNormalizeLayer(*_IMAGENET), model)
    depth = {"cifar_resnet20": 20, "cifar_resnet110": 110}[arch]
    return torch.nn.Sequential(TNormalizeLayer(*_CIFAR10), TResNet(depth, num_classes=10))


def randomise_batchnorm(model: torch.nn.Module, seed: int = 1) -> None:
    """Random running statistics and affine weights, so that eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)


def save_reference(path: Path, arch: str, legacy: bool = False, extra: dict | None = None) -> torch.nn.Module:
    """What the reference train.py writes: {epoch, arch, state_dict, optimizer} (SGD with momentum,
    after one step, so the optimizer holds momentum buffers)."""
    torch.manual_seed(0)
    model = reference_architecture(arch)
    randomise_batchnorm(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()
    x = torch.rand(2, 3, 32, 32) if arch != "resnet50" else torch.rand(2, 3, 64, 64)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    optimizer.step()
    randomise_batchnorm(model)
    payload = {"epoch": 90, "arch": arch, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
               **(extra or {})}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return model.eval()


@pytest.fixture(scope="module")
def ref110(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("ref") / "checkpoint.pth.tar"
    return path, save_reference(path, "cifar_resnet110")


# ---------------------------------------------------------------- reference-code checkpoints


def test_reference_keys_carry_the_sequential_prefix(ref110):
    path, _ = ref110
    state = torch.load(path, weights_only=True)["state_dict"]
    assert all(k.startswith("1.") for k in state) and "1.layer3.17.conv2.weight" in state
    assert not any(k.startswith("0.") for k in state)  # NormalizeLayer's constants are not saved


@pytest.mark.parametrize("legacy", [False, True])
def test_reference_cifar_resnet_gives_the_transcribed_logits(tmp_path, legacy, one_thread):
    path = tmp_path / "checkpoint.pth.tar"
    reference = save_reference(path, "cifar_resnet20", legacy=legacy)
    model, info = ms.open_model(ms.ModelRequest(model=str(path)))
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert info.input_shape == (3, 32, 32) and info.num_classes == 10 and info.dataset == "cifar10"
    assert info.kind == "reference" and "cifar_resnet20" in info.source and "epoch 90" in info.source
    assert "0.2023" in info.normalisation  # the reference code's CIFAR-10 std, not smoothviz's
    assert info.sha256 == ms.sha256_bytes(path.read_bytes())


def test_reference_resnet110_gives_the_transcribed_logits(ref110, one_thread):
    path, reference = ref110
    model, info = ms.open_model(ms.ModelRequest(model=str(path), trained_sigma=0.25))
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert info.arch == "cifar_resnet110" and info.trained_sigma == 0.25


def test_reference_resnet50_inside_dataparallel(tmp_path, one_thread):
    path = tmp_path / "checkpoint.pth.tar"
    reference = save_reference(path, "resnet50")
    assert next(iter(torch.load(path, weights_only=True)["state_dict"])).startswith("1.module.")
    model, info = ms.open_model(ms.ModelRequest(model=str(path)))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))  # small input: the net is convolutional
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert info.input_shape == (3, 224, 224) and info.num_classes == 1000 and info.dataset == "imagenet"
    assert info.preprocess == Preprocess(resize=256, crop=224)  # the reference test transform


def test_engine_counts_equal_those_of_the_transcribed_model(ref110, one_thread):
    """Same logits, so the same votes, p_A and radius as the reference architecture would give."""
    path, reference = ref110
    model, _ = ms.open_model(ms.ModelRequest(model=str(path)))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    args = {"x": x, "labels": [0, 1], "idx": [0, 1], "sigma_fn": Constant(0.25), "n0": 8, "n": 40, "alpha": 0.001,
            "num_classes": 10, "batch_size": 16, "device": "cpu", "seed": 11, "r": 0.0, "dim": 3072}
    ours = certify_points(model, **args)
    theirs = certify_points(reference, **args)
    assert [r.counts for r in ours] == [r.counts for r in theirs] and sum(ours[0].counts) == 40
    assert [(r.predict, r.radius) for r in ours] == [(r.predict, r.radius) for r in theirs]


def test_optimizer_state_and_epoch_are_plain_data(ref110):
    """weights_only accepts the reference layout as it is: nothing is substituted."""
    path, _ = ref110
    payload, unread = ms.load_plain(path.read_bytes(), str(path))
    assert unread == [] and payload["epoch"] == 90 and "momentum_buffer" in next(iter(payload["optimizer"]["state"].values()))


@pytest.mark.skipif(not hasattr(torch.serialization, "safe_globals"),
                    reason="torch < 2.5 cannot substitute non-plain objects; such files are refused instead")
def test_objects_that_are_not_plain_data_are_left_unread(tmp_path, one_thread):
    path = tmp_path / "checkpoint.pth.tar"
    reference = save_reference(path, "cifar_resnet20", extra={"args": argparse.Namespace(lr=0.1)})
    with pytest.raises(Exception, match="argparse.Namespace"):
        torch.load(path, weights_only=True)
    model, info = ms.open_model(ms.ModelRequest(model=str(path)))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert "left unread: argparse.Namespace" in info.source


class _Payload:
    """Unpickling this would create the marker file (open(marker, 'w'))."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_code_payload_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save(_Payload(marker), path)
    with pytest.raises(CheckpointError) as err:
        ms.open_model(ms.ModelRequest(model=str(path)))
    assert not marker.exists()
    assert "\n" not in str(err.value)
    inner = tmp_path / "evil2.pth.tar"
    torch.save({"arch": "cifar_resnet20", "state_dict": _Payload(marker)}, inner)
    with pytest.raises(CheckpointError, match="not a dict of tensors|not a weights-only"):
        ms.open_model(ms.ModelRequest(model=str(inner)))
    assert not marker.exists()


@pytest.mark.parametrize("change,match", [
    (lambda p: p.update(arch="vgg16"), "unknown arch 'vgg16'"),
    (lambda p: p["state_dict"].pop("1.fc.weight"), "missing fc.weight"),
    (lambda p: p["state_dict"].update({"1.fc.weight": torch.zeros(5, 64)}), r"fc.weight has shape \[5, 64\]"),
    (lambda p: p["state_dict"]["1.conv1.weight"].fill_(float("nan")), "NaN or infinite"),
])
def test_reference_checkpoint_errors_are_one_line(tmp_path, change, match):
    good = tmp_path / "good.pth.tar"
    save_reference(good, "cifar_resnet20")
    payload = torch.load(good, weights_only=True)
    change(payload)
    bad = tmp_path / "bad.pth.tar"
    torch.save(payload, bad)
    with pytest.raises(CheckpointError, match=match) as err:
        ms.open_model(ms.ModelRequest(model=str(bad)))
    assert "\n" not in str(err.value)


def test_declared_metadata_must_agree_with_the_architecture(ref110):
    path, _ = ref110
    with pytest.raises(CheckpointError, match="declares input shape 3,32,32, but --input-shape says 3,64,64"):
        ms.open_model(ms.ModelRequest(model=str(path), input_shape=(3, 64, 64)))
    with pytest.raises(InvalidArgument, match="--normalisation 'zca'"):
        ms.open_model(ms.ModelRequest(model=str(path), normalisation="zca"))


def test_input_center_layer_of_smoothadv(tmp_path, one_thread):
    path = tmp_path / "checkpoint.pth.tar"
    reference = save_reference(path, "cifar_resnet20")
    model, info = ms.open_model(ms.ModelRequest(model=str(path), normalisation="center-cifar10"))
    x = torch.rand(3, 3, 32, 32)
    mean = torch.tensor(_CIFAR10[0]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.equal(model(x), reference[1](x - mean))
    assert info.normalisation.startswith("InputCenterLayer")


# ---------------------------------------------------------------- MACER


def test_macer_resnet110_without_normalisation(tmp_path, one_thread):
    torch.manual_seed(0)
    net = TResNet(110, num_classes=10, pool_stride=1).eval()  # MACER's ResNet_Cifar: AvgPool2d(8, stride=1)
    randomise_batchnorm(net)
    path = tmp_path / "400.pth"
    torch.save({"net": net.state_dict(), "epoch": 400}, path)
    model, info = ms.open_model(ms.ModelRequest(model=str(path)))
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    assert info.kind == "macer" and info.arch == "resnet110" and info.dataset is None
    assert info.normalisation.startswith("none")


def test_macer_lenet(tmp_path):
    class LeNet(torch.nn.Module):  # MACER model.py
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 20, 5, 1)
            self.conv2 = torch.nn.Conv2d(20, 50, 5, 1)
            self.fc1 = torch.nn.Linear(4 * 4 * 50, 500)
            self.fc2 = torch.nn.Linear(500, 10)

        def forward(self, x):
            x = torch.nn.functional.max_pool2d(torch.nn.functional.relu(self.conv1(x)), 2, 2)
            x = torch.nn.functional.max_pool2d(torch.nn.functional.relu(self.conv2(x)), 2, 2)
            return self.fc2(torch.nn.functional.relu(self.fc1(x.view(-1, 800))))

    net = LeNet().eval()
    path = tmp_path / "mnist.pth"
    torch.save({"net": net.state_dict(), "epoch": 1}, path)
    model, info = ms.open_model(ms.ModelRequest(model=str(path)))
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    assert info.input_shape == (1, 28, 28) and info.dataset == "mnist"


def test_bare_state_dict_asks_for_an_architecture(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(CheckpointError, match="bare weights.*torchvision:NAME --weights weights.pt"):
        ms.open_model(ms.ModelRequest(model=str(path)))


# ---------------------------------------------------------------- torchvision


def test_torchvision_by_name_with_local_weights(tmp_path, one_thread):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    randomise_batchnorm(net)
    path = tmp_path / "resnet18-mine.pth"
    torch.save({"model": net.state_dict(), "args": argparse.Namespace(epochs=90)}, path)  # torchvision's train.py
    if not hasattr(torch.serialization, "safe_globals"):
        torch.save(net.state_dict(), path)
    model, info = ms.open_model(ms.ModelRequest(model="torchvision:resnet18", weights=str(path)))
    default = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    x = torch.rand(2, 3, 64, 64)
    mean, std = torch.tensor(default.mean).view(1, 3, 1, 1), torch.tensor(default.std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.equal(model(x), net((x - mean) / std))
    assert info.input_shape == (3, default.crop_size[0], default.crop_size[0]) and info.num_classes == 1000
    assert info.preprocess == Preprocess(resize=default.resize_size[0], crop=default.crop_size[0])
    assert "not a published file" in info.source


def test_torchvision_errors(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    with pytest.raises(InvalidArgument, match="needs --weights FILE"):
        ms.open_model(ms.ModelRequest(model="torchvision:resnet18"))
    with pytest.raises(InvalidArgument, match="not a torchvision classifier"):
        ms.open_model(ms.ModelRequest(model="torchvision:resnet19", weights=str(path)))
    with pytest.raises(CheckpointError, match=r"with 1000 classes: fc.weight has shape \[10, 512\]"):
        ms.open_model(ms.ModelRequest(model="torchvision:resnet18", weights=str(path)))
    _, info = ms.open_model(ms.ModelRequest(model="torchvision:resnet18", weights=str(path), num_classes=10))
    assert info.num_classes == 10


# ---------------------------------------------------------------- archives


def _small_cnn() -> torch.nn.Module:
    torch.manual_seed(2)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 5),
    )
    randomise_batchnorm(net)
    return net.eval()


def _counts(model, x, seed=5):
    results = certify_points(model, x, [0] * len(x), list(range(len(x))), Constant(0.5), n0=10, n=300, alpha=0.001,
                             num_classes=5, batch_size=64, device="cpu", seed=seed, r=0.0, dim=3 * 12 * 12)
    return [r.counts for r in results]


def test_torchscript_round_trip_gives_the_eager_counts(tmp_path, one_thread):
    net = _small_cnn()
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(net), str(path),
                   _extra_files=ms.archive_metadata((3, 12, 12), 5, trained_sigma=0.5))
    with pytest.raises(CheckpointError, match="TorchScript archive: loading one can run code.*--trust-archive"):
        ms.open_model(ms.ModelRequest(model=str(path)))
    model, info = ms.open_model(ms.ModelRequest(model=str(path), trust_archive=True))
    assert info.input_shape == (3, 12, 12) and info.num_classes == 5 and info.trained_sigma == 0.5 and info.runs_code
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    eager = _counts(net, x)
    assert _counts(model, x) == eager and all(sum(c) == 300 for c in eager)


@pytest.mark.parametrize("dynamic", [True, False])
def test_export_round_trip_gives_the_eager_counts(tmp_path, dynamic, one_thread):
    net = _small_cnn()
    example = (torch.rand(4, 3, 12, 12),)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    program = torch.export.export(net, example, dynamic_shapes=shapes)
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path), extra_files=ms.archive_metadata((3, 12, 12), 5))
    with pytest.raises(CheckpointError, match="torch.export archive"):
        ms.open_model(ms.ModelRequest(model=str(path)))
    model, _ = ms.open_model(ms.ModelRequest(model=str(path), trust_archive=True))
    assert model.fixed_batch == (None if dynamic else 4)  # a fixed batch runs in padded chunks of 4
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    assert _counts(model, x) == _counts(net, x)


def test_archive_without_metadata_is_asked_for_it(tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(_small_cnn()), str(path))
    with pytest.raises(CheckpointError, match="declares no input shape; give --input-shape"):
        ms.open_model(ms.ModelRequest(model=str(path), trust_archive=True))
    with pytest.raises(CheckpointError, match="declares no number of classes"):
        ms.open_model(ms.ModelRequest(model=str(path), trust_archive=True, input_shape=(3, 12, 12)))
    _, info = ms.open_model(ms.ModelRequest(model=str(path), trust_archive=True, input_shape=(3, 12, 12),
                                            num_classes=5))
    assert info.input_shape == (3, 12, 12)


def test_archive_memory_probe_counts_operation_outputs(tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(_small_cnn()), str(path), _extra_files=ms.archive_metadata((3, 12, 12), 5))
    model, _ = ms.open_model(ms.ModelRequest(model=str(path), trust_archive=True))
    probe = model.measure_memory_per_sample((3, 12, 12), torch.device("cpu"))
    first_conv = 8 * 12 * 12 * 4  # the first convolution's output alone, per sample, in bytes
    assert probe.bytes_per_sample > 2 * first_conv + 3 * 3 * 12 * 12 * 4


# ---------------------------------------------------------------- user code


_CODE = '''
import torch

def build():
    torch.manual_seed(7)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    net.input_shape = (3, 2, 2)
    net.num_classes = 3
    return net

def broken():
    raise ValueError("no such layer")

def not_a_module():
    return 42
'''


def test_user_code_builds_the_model_and_takes_weights(tmp_path):
    code = tmp_path / "mymodel.py"
    code.write_text(_CODE)
    torch.manual_seed(8)
    trained = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    weights = tmp_path / "trained.pt"
    torch.save({"state_dict": trained.state_dict()}, weights)
    model, info = ms.open_model(ms.ModelRequest(code=f"{code}:build", weights=str(weights)))
    x = torch.rand(4, 3, 2, 2)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
    assert info.input_shape == (3, 2, 2) and info.num_classes == 3 and info.runs_code
    assert info.sha256 == ms.sha256_bytes(weights.read_bytes())


@pytest.mark.parametrize("function,match", [
    ("broken", "raised ValueError: no such layer"),
    ("not_a_module", "returned a int, not a torch.nn.Module"),
    ("missing", "defines no function missing"),
])
def test_user_code_errors_are_one_line(tmp_path, function, match):
    code = tmp_path / "mymodel.py"
    code.write_text(_CODE)
    with pytest.raises(CheckpointError, match=match) as err:
        ms.open_model(ms.ModelRequest(code=f"{code}:{function}"))
    assert "\n" not in str(err.value)


def test_user_code_text_is_checked_before_anything_runs(tmp_path):
    with pytest.raises(InvalidArgument, match="expected FILE.py:FUNCTION"):
        ms.parse_code("model.py")
    with pytest.raises(InvalidArgument, match="is not a .py file"):
        ms.parse_code(f"{tmp_path}/model.txt:build")
    with pytest.raises(InvalidArgument, match="not found"):
        ms.parse_code(f"{tmp_path}/nothing.py:build")


# ---------------------------------------------------------------- fitting the data, runs


def _npz(tmp_path: Path, shape=(3, 32, 32), classes=10, n=6) -> str:
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path / "points.npz"
    np.savez(path, x=rng.random((n, *shape)).astype(np.float32), y=np.arange(n) % classes,
             class_names=np.array([f"c{i}" for i in range(classes)]))
    return f"npz:{path}"


def test_check_fits_names_what_differs(tmp_path, ref110):
    path, _ = ref110
    model, info = ms.open_model(ms.ModelRequest(model=str(path)))
    ms.check_fits(model, info, load_source(_npz(tmp_path)), "m")
    (tmp_path / "small").mkdir()
    with pytest.raises(CheckpointError, match=r"m takes inputs of shape \[3, 32, 32\], but npz:.* has shape \[3, 8, 8\]"):
        ms.check_fits(model, info, load_source(_npz(tmp_path / "small", shape=(3, 8, 8))), "m")
    (tmp_path / "four").mkdir()
    with pytest.raises(CheckpointError, match="m gives 10 classes, but npz:.* has 4"):
        ms.check_fits(model, info, load_source(_npz(tmp_path / "four", classes=4)), "m")
    wide = ms.ModelInfo(**{**info.__dict__, "value_range": (0.0, 255.0)})
    with pytest.raises(CheckpointError, match=r"takes inputs in \[0, 255\], but smoothviz data are in \[0, 1\]"):
        ms.check_fits(model, wide, load_source(_npz(tmp_path)), "m")


def test_recorded_run_rebuilds_the_model_and_gates_code(tmp_path, ref110, one_thread):
    path, _ = ref110
    data = _npz(tmp_path)
    request = ms.ModelRequest(model=str(path), trained_sigma=0.25)
    _, info = ms.open_model(request)
    record = ms.run_record(request, info, data)
    assert record["source"] == "reference" and record["trained_sigma"] == 0.25 and record["dataset"] == "cifar10"
    prepared = prepare_run({"dataset": data, "split": "test", "checkpoint": ms.run_checkpoint(request),
                            "sigma_spec": "constant:0.25", "indices": [0, 3], "options": {"model": record},
                            "device": "cpu", "batch_size": 16})
    assert prepared.meta["sigma"] == "constant:0.25" and prepared.meta["arch"] == "cifar_resnet110"

    code = tmp_path / "mymodel.py"
    code.write_text(_CODE)
    request = ms.ModelRequest(code=f"{code}:build")
    _, info = ms.open_model(request)
    record = ms.run_record(request, info, "x")
    assert record["code_sha256"] == ms.sha256_bytes(code.read_bytes())
    with pytest.raises(CheckpointError, match="this run executes model code .*allow it with --model-code"):
        ms.load_run_model(str(code), record, None, torch.device("cpu"))
    code.write_text(_CODE + "\n# changed\n")
    with pytest.raises(CheckpointError, match="changed since the run was recorded"):
        ms.load_run_model(str(code), record, None, torch.device("cpu"), trust_code=True)


def test_a_python_file_runs_only_as_model_code(tmp_path):
    marker = tmp_path / "ran"
    code = tmp_path / "side_effect.py"
    code.write_text(f"open({str(marker)!r}, 'w').close()\nimport torch\ndef build():\n    return torch.nn.Linear(2, 2)\n")
    with pytest.raises(CheckpointError):
        ms.open_model(ms.ModelRequest(model=str(code)))  # a .py given as --model is a file, not code to run
    assert not marker.exists()
    ms.open_model(ms.ModelRequest(code=f"{code}:build", input_shape=(2,), num_classes=2))
    assert marker.exists()


def test_plain_loader_reads_bytes_it_was_given():
    buffer = io.BytesIO()
    torch.save({"a": torch.ones(2)}, buffer)
    payload, unread = ms.load_plain(buffer.getvalue(), "mem")
    assert torch.equal(payload["a"], torch.ones(2)) and unread == []
