"""Noise-augmented training: checkpoints, per-point sigma(x), resume, the train verb, and the
checkpoints shipped in assets/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from smoothviz import data, train
from smoothviz.cli import main
from smoothviz.data import load_dataset
from smoothviz.errors import Cancelled, InvalidArgument, SigmaSpecError
from smoothviz.models import load_checkpoint
from smoothviz.plots_explore import epoch_history
from smoothviz.sigma import KNN, build_sigma
from smoothviz.train import evaluate, resume_path, train_model

ASSETS = Path(__file__).resolve().parents[1] / "assets"
API_META_KEYS = {"dataset", "arch", "input_shape", "num_classes", "sigma", "sigma_params", "r",
                 "epochs", "clean_accuracy", "noisy_accuracy", "train_args", "git_commit", "created"}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_training_gives_a_weights_only_checkpoint_that_beats_chance(tmp_path):
    ds = load_dataset("toy2d-moons")
    out = tmp_path / "moons.pt"
    events = []
    meta = train_model(ds, "mlp", "constant:0.05", 2, out, batch_size=64, lr=0.1, seed=3,
                       device="cpu", progress=events.append)
    raw = torch.load(out, weights_only=True)
    assert raw["meta"] == meta and API_META_KEYS <= set(meta)
    assert meta["clean_accuracy"] > 0.75  # chance is 0.5 on the two balanced moons
    assert 0 <= meta["noisy_accuracy"] <= 1 and meta["r"] == 0.0
    assert meta["train_args"]["seed"] == 3 and meta["sigma"] == "constant:0.05"
    assert not resume_path(out).exists()
    model, _ = load_checkpoint(out, expected_dataset="toy2d-moons")
    assert evaluate(model, ds.test_x, ds.test_y) == meta["clean_accuracy"]
    assert events[-1]["status"] == "done" and events[-1]["done"] == events[-1]["total"] == 48
    assert [e["epoch"] for e in events if e.get("event") == "epoch"] == [1, 2]


def test_add_noise_draws_each_row_with_its_own_sigma():
    x = torch.zeros(3, 20000)
    sigma = torch.tensor([0.1, 1.0, 3.0])
    noisy = train.add_noise(x, sigma, torch.Generator().manual_seed(0))
    # The sample std of 20000 draws is within 3% of sigma with overwhelming probability.
    assert torch.allclose(noisy.std(dim=1), sigma, rtol=0.03)


def test_knn_training_uses_each_points_own_sigma_without_itself(tmp_path, monkeypatch):
    ds = load_dataset("toy2d-moons")
    seen = []
    real = train.add_noise

    def spy(x, sigma, generator):
        seen.append((x.clone(), sigma.clone()))
        return real(x, sigma, generator)

    monkeypatch.setattr(train, "add_noise", spy)
    meta = train_model(ds, "mlp", "knn:0.1,50.0,5", 1, tmp_path / "k.pt", batch_size=500,
                       device="cpu")
    reference = KNN(ds.train_x, 0.1, 50.0, k=5)
    assert meta["r"] == 50.0 and meta["sigma_params"]["m"] == pytest.approx(reference.m, rel=1e-6)
    expected = reference.training_sigma()
    batches = seen[:3]  # 1500 training points in 3 batches; later calls are the evaluation
    assert sum(len(x) for x, _ in batches) == 1500
    for x, sigma in batches:
        idx = torch.cdist(x, ds.train_x).argmin(dim=1)  # the moons points are distinct
        assert torch.allclose(sigma, expected[idx], rtol=1e-5)
    assert expected.std() / expected.mean() > 0.05  # sigma really varies across points
    again = build_sigma(meta["sigma"], ds.train_x)
    assert again.m == meta["sigma_params"]["m"]


def test_resume_after_cancel_ends_with_the_same_weights(tmp_path):
    ds = load_dataset("toy2d-blobs")
    args = dict(batch_size=100, lr=0.05, seed=1, device="cpu")  # 15 batches per epoch
    straight = train_model(ds, "mlp", "constant:0.1", 3, tmp_path / "a.pt", **args)

    out = tmp_path / "b.pt"
    polls = []

    def cancel_in_second_epoch():
        polls.append(1)
        return len(polls) > 20

    first = []
    with pytest.raises(Cancelled, match="rerun to resume from epoch 1"):
        train_model(ds, "mlp", "constant:0.1", 3, out, cancel=cancel_in_second_epoch, progress=first.append, **args)
    assert not out.exists()
    state = torch.load(resume_path(out), weights_only=True)
    assert state["epoch"] == 1

    events = []
    resumed = train_model(ds, "mlp", "constant:0.1", 3, out, progress=events.append, **args)
    # the finished epoch is reported again first, exactly as it was when it finished
    (before,) = [e for e in first if e.get("event") == "epoch"]
    assert events[0]["replayed"] and events[0]["message"] == before["message"] and events[0]["done"] == 15
    assert events[1]["done"] == 16 and events[1]["epoch"] == 2  # continued in epoch 2
    assert [e["epoch"] for e in events if e.get("event") == "epoch"] == [1, 2, 3]
    assert not resume_path(out).exists()
    a = torch.load(tmp_path / "a.pt", weights_only=True)["state_dict"]
    b = torch.load(out, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["clean_accuracy"] == straight["clean_accuracy"]


def test_rerunning_a_finished_training_returns_its_meta(tmp_path):
    ds = load_dataset("toy2d-moons")
    out = tmp_path / "m.pt"
    meta = train_model(ds, "mlp", "constant:0.1", 1, out, device="cpu")
    events = []
    again = train_model(ds, "mlp", "constant:0.1", 1, out, device="cpu", progress=events.append)
    assert again == meta and [(e["status"], e["done"]) for e in events] == [("done", 12)]
    changed = train_model(ds, "mlp", "constant:0.1", 1, out, device="cpu", seed=5)
    assert changed["train_args"]["seed"] == 5 and changed["created"] >= meta["created"]


def test_a_foreign_resume_file_is_ignored(tmp_path):
    ds = load_dataset("toy2d-moons")
    out = tmp_path / "m.pt"
    resume_path(out).write_bytes(b"garbage")
    meta = train_model(ds, "mlp", "constant:0.1", 1, out, device="cpu")
    assert meta["clean_accuracy"] > 0.5 and not resume_path(out).exists()


def _cli(capsys, *argv):
    code = main(["train", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_trains_and_writes_the_progress_file(tmp_path, capsys):
    out, progress = tmp_path / "moons.pt", tmp_path / "progress.json"
    code, stdout, stderr = _cli(capsys, "--dataset", "toy2d", "--sigma", "knn:0.05,1.0,10",
                                "--epochs", "2", "--out", str(out), "--device", "cpu",
                                "--progress-file", str(progress))
    assert code == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["dataset"] == "toy2d-moons" and summary["arch"] == "mlp"
    assert summary["r"] == 1.0 and summary["sigma"].startswith("knn:0.05,1.0,10,m=")
    state = json.loads(progress.read_text())
    assert state["status"] == "done" and state["done"] == state["total"] == 24
    assert "clean accuracy" in state["message"] and "epoch 2/2" in stderr
    assert "computing kNN distances among the 1,500 training points" in stderr
    assert "training mlp on toy2d-moons (1,500 points)" in stderr and "for 2 epochs" in stderr
    assert "estimate: " in stderr and "2 epochs × 12 batches of 128 at" in stderr


def test_a_resumed_cli_log_holds_every_epoch(tmp_path, capsys):
    ds = load_dataset("toy2d-blobs")
    out = tmp_path / "b.pt"
    first = []
    polls = []
    with pytest.raises(Cancelled):
        train_model(ds, "mlp", "constant:0.1", 3, out, batch_size=100, seed=1, device="cpu",
                    progress=first.append, cancel=lambda: polls.append(1) or len(polls) > 20)
    code, _, stderr = _cli(capsys, "--dataset", "toy2d-blobs", "--arch", "mlp", "--sigma", "constant:0.1",
                           "--epochs", "3", "--batch-size", "100", "--seed", "1", "--device", "cpu",
                           "--out", str(out))
    assert code == 0, stderr
    history = epoch_history(stderr)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    (before,) = [e["message"] for e in first if e.get("event") == "epoch"]
    assert epoch_history(before) == history[:1]  # epoch 1 as the first, interrupted job printed it
    assert stderr.count(before) == 1


def test_a_diverging_training_stops_before_saving_that_epoch(tmp_path):
    ds = load_dataset("toy2d-moons")
    out = tmp_path / "m.pt"
    with pytest.raises(InvalidArgument, match="training diverged in epoch 1: the loss is .*lower the learning rate"):
        train_model(ds, "mlp", "constant:0.1", 2, out, lr=1e30, device="cpu")
    assert not out.exists() and not resume_path(out).exists()


def test_estimate_training_checks_everything_before_any_distance(monkeypatch):
    import smoothviz.speed as speed

    ds = load_dataset("toy2d-moons")
    monkeypatch.setattr(train, "KNN", lambda *a, **k: pytest.fail("no kNN distances for an estimate"))
    with pytest.raises(SigmaSpecError, match="k=2000 exceeds the 1499 other training points"):
        train.estimate_training(ds, "mlp", "knn:0.25,0.1,2000", 1, device="cpu")
    with pytest.raises(InvalidArgument, match="image inputs"):
        train.estimate_training(ds, "cnn-small", "constant:0.1", 1, device="cpu")
    estimate = train.estimate_training(ds, "mlp", "knn:0.25,0.1,20", 3, batch_size=100, device="cpu")
    assert estimate.seconds > 0 and "3 epochs × 15 batches of 100" in estimate.text
    monkeypatch.setattr(speed, "available_memory", lambda device: 2**20)
    with pytest.raises(InvalidArgument, match="a batch needs about"):
        train.estimate_training(ds, "mlp", "constant:0.1", 1, batch_size=1500, device="cpu")


def test_a_ddrs_sigma_is_refused_before_any_model_or_file(tmp_path, monkeypatch):
    ds = load_dataset("toy2d-moons")
    monkeypatch.setattr(train, "_model", lambda *a, **k: pytest.fail("no model for a refused sigma"))
    with pytest.raises(SigmaSpecError, match="training takes constant or knn; ddrs optimises"):
        train.estimate_training(ds, "mlp", "ddrs:0.1,0.5,4", 1, device="cpu")
    with pytest.raises(SigmaSpecError, match="training takes constant or knn; ddrs optimises"):
        train_model(ds, "mlp", "ddrs:0.1,0.5,4", 1, tmp_path / "d.pt", device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_cli_choices_are_the_library_ones(capsys):
    from smoothviz import models
    from smoothviz.commands import train as train_cmd

    assert train_cmd.ARCH_CHOICES == models.ARCHITECTURES
    assert train_cmd.OPTIMIZER_CHOICES == train.OPTIMIZERS and train_cmd.SCHEDULE_CHOICES == train.SCHEDULES
    assert train_cmd.LR_HELP == ", ".join(f"{k} {v:g}" for k, v in train.DEFAULT_LR.items())


@pytest.mark.parametrize("argv,match", [
    (["--sigma", "gauss:0.25"], "unknown kind 'gauss'"),
    (["--sigma", "knn:0.25,-1,20"], "r must be"),
    (["--sigma", "knn:0.25,0.1,5000"], "exceeds the 1436 other training points"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--arch", "lenet"], "at least 16x16"),
    (["--out", "model.bin"], "must end in .pt"),
])
def test_cli_user_errors_exit_2_with_one_line(tmp_path, capsys, argv, match):
    progress = tmp_path / "p.json"
    base = ["--epochs", "1", "--device", "cpu", "--progress-file", str(progress)]
    if "--out" not in argv:
        base += ["--out", str(tmp_path / "x.pt")]
    code, _, stderr = _cli(capsys, *base, *argv)
    assert code == 2
    errors = [line for line in stderr.splitlines() if line.startswith("smoothviz train: error:")]
    assert "Traceback" not in stderr and len(errors) == 1 and match in errors[0]
    assert stderr.rstrip().endswith(errors[0])
    assert json.loads(progress.read_text())["status"] == "failed"


def test_cli_unknown_arch_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--arch", "transformer"])
    assert info.value.code == 2 and "invalid choice: 'transformer'" in capsys.readouterr().err


# ---------------------------------------------------------------- shipped checkpoints

DIGITS_ASSETS = {  # file -> minimum clean accuracy on the 360 digits test images
    "digits-cnn-constant-0.12.pt": 0.95, "digits-cnn-knn-0.12.pt": 0.95,
    "digits-cnn-constant-0.25.pt": 0.95, "digits-cnn-knn-0.25.pt": 0.95,
    "digits-cnn-constant-0.5.pt": 0.90, "digits-cnn-knn-0.5.pt": 0.90,
}
FASHION_ASSETS = {"fashion-mnist-lenet-constant-0.25.pt": 0.85,
                  "fashion-mnist-lenet-knn-0.25.pt": 0.85}


def _check_asset(name: str, minimum: float, dataset: str) -> None:
    path = ASSETS / name
    assert path.stat().st_size < 2 * 2**20
    model, meta = load_checkpoint(path, expected_dataset=dataset)
    ds = load_dataset(dataset, download=False)
    clean = evaluate(model, ds.test_x, ds.test_y)
    assert clean == pytest.approx(meta["clean_accuracy"], abs=1e-9) and clean > minimum
    kind = name.split("-")[-2]
    assert meta["sigma_params"]["kind"] == kind and meta["train_args"]["sigma"].startswith(kind)
    assert (meta["r"] > 0) == (kind == "knn")
    assert name in (ASSETS / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(DIGITS_ASSETS))
def test_shipped_digits_checkpoints(name):
    _check_asset(name, DIGITS_ASSETS[name], "digits")


@pytest.mark.parametrize("name", sorted(FASHION_ASSETS))
def test_shipped_fashion_checkpoints(name):
    if not data.FASHION_SYSTEM_DIR.is_dir() and not (data.default_root() / "FashionMNIST").is_dir():
        pytest.skip("Fashion-MNIST files are not on this machine (dataset-fashion-mnist not "
                    "installed, no ./data/FashionMNIST)")
    _check_asset(name, FASHION_ASSETS[name], "fashion-mnist")
