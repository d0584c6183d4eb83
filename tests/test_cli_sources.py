"""certify/predict with foreign models and data: reference-code checkpoints, archives, user code,
image folders and npz files; the run records what it certified; bad input is one line, nothing written."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from smoothviz import data
from smoothviz.cli import main
from smoothviz.model_sources import archive_metadata
from smoothviz.models import build_model, save_checkpoint
from smoothviz.reference_archs import ReferenceCifarResNet
from smoothviz.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]

_CODE = '''
import torch

def build():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))

def broken():
    raise ValueError("no such layer")
'''


def _write_cifar(directory: Path, n: int = 10) -> None:
    """CIFAR-10 python batches of random images (the layout smoothviz.data reads)."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
        with open(directory / name, "wb") as fh:
            pickle.dump(entry, fh)


def _folder(root: Path, classes, per_class: int, size: int = 8) -> Path:
    rng = np.random.default_rng(len(classes))
    for name in classes:
        (root / name).mkdir(parents=True)
    for name in classes[:3]:
        for j in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size + j, size, 3), dtype=np.uint8)).save(root / name / f"{j}.png")
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A reference-code checkpoint, fake CIFAR-10, image folders, npz files, an archive, user code."""
    root = tmp_path_factory.mktemp("sources")
    out = {"root": root}
    _write_cifar(root / "data" / "cifar-10-batches-py")
    torch.manual_seed(0)
    net = ReferenceCifarResNet(20, 10)
    model = torch.nn.Sequential(torch.nn.Identity(), net)  # the reference keys: 1.conv1.weight, ...
    out["ref"] = root / "checkpoint.pth.tar"
    torch.save({"epoch": 1, "arch": "cifar_resnet20", "state_dict": model.state_dict(),
                "optimizer": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).state_dict()}, out["ref"])
    out["val"] = _folder(root / "val", ["a", "b", "c"], per_class=2)
    out["train"] = _folder(root / "train", ["a", "b", "c"], per_class=3)
    rng = np.random.default_rng(1)
    out["npz"] = root / "points.npz"
    np.savez(out["npz"], x=rng.random((4, 3, 32, 32)).astype(np.float32), y=np.array([0, 1, 2, 3]),
             class_names=np.array([str(i) for i in range(10)]))
    out["small"] = root / "small.npz"
    np.savez(out["small"], x=rng.random((4, 3, 8, 8)).astype(np.float32), y=np.array([0, 1, 2, 3]))
    out["wide"] = root / "wide.npz"
    np.savez(out["wide"], x=rng.random((4, 3, 32, 32)).astype(np.float32) * 2, y=np.array([0, 1, 2, 3]))
    out["pickle"] = root / "evil.npz"
    out["pickle"].write_bytes(pickle.dumps({"x": [1]}))
    out["code"] = root / "mymodel.py"
    out["code"].write_text(_CODE)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    out["archive"] = root / "model.pt"
    torch.jit.save(torch.jit.script(cnn), str(out["archive"]), _extra_files=archive_metadata((3, 8, 8), 3))
    out["own"] = root / "digits.pt"
    save_checkpoint(out["own"], build_model("cnn-small", (1, 8, 8), 10),
                    {"dataset": "digits", "arch": "cnn-small", "input_shape": [1, 8, 8], "num_classes": 10,
                     "sigma": "constant:0.25"})
    return out


@pytest.fixture
def env(files, monkeypatch, tmp_path):
    """Fake CIFAR-10 under SMOOTHVIZ_DATA, a fresh working folder and kNN cache, a clean dataset cache."""
    monkeypatch.setenv("SMOOTHVIZ_DATA", str(files["root"] / "data"))
    monkeypatch.setenv("SMOOTHVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SMOOTHVIZ_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    data.clear_cache()
    yield tmp_path
    data.clear_cache()


def cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse refuses a malformed value itself
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


FAST = ("--n0", 4, "--n", 24, "--device", "cpu", "--quiet", "--batch-size", 32)


def test_certify_a_reference_checkpoint_on_cifar10(files, env, capsys):
    db = env / "r.db"
    code, out, err = cli(capsys, "certify", "--model", files["ref"], "--dataset", "cifar10", "--trained-sigma", 0.25,
                         "--skip", 5, *FAST, "--db", db)
    assert code == 0, err
    assert "run 1" in out and "2/2 points" in out
    with Store(db) as store:
        run = store.run(1)
        results = store.results(1)
    record = run["options"]["model"]
    assert run["dataset"] == "cifar10" and run["indices"] == [0, 5]  # --skip 5 over 10 test images
    assert run["sigma_spec"] == "constant:0.25"  # the default sigma is the trained one
    assert record["source"] == "reference" and record["arch"] == "cifar_resnet20" and record["trained_sigma"] == 0.25
    assert run["checkpoint_sha256"] == hashlib.sha256(files["ref"].read_bytes()).hexdigest()
    assert [sum(c) for c in results["counts"]] == [24, 24]
    code, _, err = cli(capsys, "certify", "--model", files["ref"], "--trained-sigma", 0.25, "--skip", 5, *FAST,
                       "--db", db)
    assert code == 0 and "run 1: resuming (2 of 2 points stored)" in err  # the dataset defaults to cifar10
    code, out, err = cli(capsys, "certify", "--run", 1, "--db", db, "--quiet")
    assert code == 0 and "done, 2/2 points" in out


def test_predict_with_a_reference_checkpoint_on_npz(files, env, capsys):
    code, out, err = cli(capsys, "predict", "--model", files["ref"], "--data", f"npz:{files['npz']}",
                         "--sigma", "constant:0.5", "--n", 20, "--points", 2, "--device", "cpu", "--quiet")
    assert code == 0, err
    assert out.startswith("2 points (npz:") and "accuracy" in out


def test_user_code_on_an_image_folder_with_a_knn_reference(files, env, capsys):
    db = env / "r.db"
    source = f"imagefolder(crop=8):{files['val']}"
    code, out, err = cli(capsys, "certify", "--model-code", f"{files['code']}:build", "--input-shape", "3,8,8",
                         "--num-classes", 3, "--data", source, "--sigma", "knn:0.25,0.1,2",
                         "--sigma-reference", f"imagefolder:{files['train']}", *FAST, "--db", db)
    assert code == 0, err
    with Store(db) as store:
        run = store.run(1)
    assert run["dataset"] == source and run["options"]["model"]["code"] == f"{files['code']}:build"
    assert run["options"]["sigma_reference"]["source"] == f"imagefolder(crop=8):{files['train']}"
    assert run["sigma_params"]["m"] is not None and len(list((env / "cache").glob("knn-*.json"))) == 1
    code, _, err = cli(capsys, "certify", "--run", 1, "--db", db)
    assert code == 2 and "allow it with --model-code" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, "certify", "--run", 1, "--db", db, "--model-code", f"{files['code']}:build", "--quiet")
    assert code == 0, err


def test_archive_needs_trust_then_certifies(files, env, capsys):
    args = ("certify", "--model", files["archive"], "--data", f"imagefolder(crop=8):{files['val']}",
            "--sigma", "constant:0.25", *FAST, "--db", env / "r.db")
    code, _, err = cli(capsys, *args)
    assert code == 2 and "add --trust-archive" in err and not (env / "r.db").exists()
    code, _, err = cli(capsys, *args, "--trust-archive")
    assert code == 0, err
    with Store(env / "r.db") as store:
        assert store.run(1)["options"]["model"]["source"] == "torchscript"


def test_reference_resnet50_on_an_imagenet_style_folder(files, env, capsys, tmp_path):
    """The ImageNet path: 1000 class folders, resize 256 and centre crop 224 before the noise."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.DataParallel(torchvision.models.resnet50()))
    ckpt = tmp_path / "imagenet.pth.tar"
    torch.save({"epoch": 90, "arch": "resnet50", "state_dict": model.state_dict(), "optimizer": {}}, ckpt)
    val = _folder(tmp_path / "imagenet-val", [f"n{i:08d}" for i in range(1000)], per_class=1, size=300)
    code, _, err = cli(capsys, "certify", "--model", ckpt, "--sigma", "constant:0.5", "--points", 1, *FAST)
    assert code == 2 and "trained on imagenet, which smoothviz does not ship" in err
    code, out, err = cli(capsys, "certify", "--model", ckpt, "--data", f"imagefolder:{val}", "--sigma", "constant:0.5",
                         "--indices", 0, "--n0", 1, "--n", 2, "--batch-size", 2, "--device", "cpu", "--quiet",
                         "--db", tmp_path / "r.db")
    assert code == 0, err
    with Store(tmp_path / "r.db") as store:
        assert store.run(1)["dataset"] == f"imagefolder(resize=256,crop=224):{val}"


GOOD = ("--sigma", "constant:0.25", "--points", 1)
BAD = [  # (name, arguments from the files, what the one error line says)
    ("missing", lambda f: ["--model", "nothing.pth.tar", *GOOD], "nothing.pth.tar not found"),
    ("tv-weights", lambda f: ["--model", "torchvision:resnet18", "--dataset", "cifar10", *GOOD],
     "needs --weights FILE"),
    ("tv-name", lambda f: ["--model", "torchvision:resnet19", "--weights", f["ref"], *GOOD],
     "not a torchvision classifier"),
    ("archive", lambda f: ["--model", f["archive"], "--data", f"imagefolder:{f['val']}", *GOOD],
     "add --trust-archive"),
    ("shape", lambda f: ["--model", f["ref"], "--data", f"npz:{f['small']}", *GOOD],
     "takes inputs of shape [3, 32, 32]"),
    ("classes", lambda f: ["--model", f["ref"], "--data", f"imagefolder(crop=32):{f['val']}", *GOOD],
     "gives 10 classes, but"),
    ("range", lambda f: ["--model", f["ref"], "--data", f"npz:{f['wide']}", *GOOD], "values span"),
    ("pickle", lambda f: ["--model", f["ref"], "--data", f"npz:{f['pickle']}", *GOOD], "not an npz archive"),
    ("no-folder", lambda f: ["--model", f["ref"], "--data", "imagefolder:nowhere", *GOOD], "no such folder"),
    ("code-shape", lambda f: ["--model-code", f"{f['code']}:build", "--dataset", "cifar10", *GOOD],
     "give --input-shape"),
    ("code-raises", lambda f: ["--model-code", f"{f['code']}:broken", *GOOD], "raised ValueError: no such layer"),
    ("code-text", lambda f: ["--model-code", "mymodel:build", *GOOD], "mymodel is not a .py file"),
    ("code-function", lambda f: ["--model-code", f"{f['code']}", *GOOD], "expected FILE.py:FUNCTION"),
    ("own-meta", lambda f: ["--model", f["own"], "--trained-sigma", 0.1, *GOOD], "--trained-sigma: "),
    ("declared", lambda f: ["--model", f["ref"], "--input-shape", "3,64,64", *GOOD],
     "but --input-shape says 3,64,64"),
    ("value-range", lambda f: ["--model", f["ref"], "--value-range", "0,255", *GOOD],
     "but --value-range says 0.0,255.0"),
    ("shape-text", lambda f: ["--model", f["ref"], "--input-shape", "3,x", *GOOD], "argument --input-shape"),
    ("skip", lambda f: ["--model", f["ref"], "--skip", 0, "--sigma", "constant:0.25"], "argument --skip"),
    ("normalisation", lambda f: ["--model", f["ref"], "--normalisation", "zca", *GOOD], "--normalisation 'zca'"),
    ("no-sigma", lambda f: ["--model", f["ref"], "--points", 1], "--sigma: the model records no sigma"),
    ("ref-constant", lambda f: ["--model", f["ref"], *GOOD, "--sigma-reference", f"imagefolder:{f['val']}"],
     "only a knn sigma"),
    ("knn-no-train", lambda f: ["--model-code", f"{f['code']}:build", "--input-shape", "3,8,8", "--num-classes", 3,
                                "--data", f"imagefolder(crop=8):{f['val']}", "--sigma", "knn:0.25,0.1,2",
                                "--points", 1], "no training points"),
    ("split", lambda f: ["--model", f["ref"], "--data", f"npz:{f['npz']}", "--split", "train", *GOOD],
     "has no train points"),
    ("weights-own", lambda f: ["--model", f["ref"], "--weights", f["ref"], *GOOD],
     "--weights goes with torchvision:NAME"),
]


@pytest.mark.parametrize("name,argv,message", BAD, ids=[case[0] for case in BAD])
def test_bad_input_is_one_line_and_writes_nothing(files, env, capsys, name, argv, message):
    before = sorted(p.relative_to(env) for p in env.rglob("*"))
    for verb, extra in (("certify", ("--db", env / "r.db")), ("predict", ())):
        code, out, err = cli(capsys, verb, *argv(files), *extra, "--device", "cpu")
        lines = err.strip().splitlines()
        assert code == 2, (name, err)
        assert len(lines) == 1 and message in lines[0], (name, err)
        assert "Traceback" not in err and out == ""
    assert sorted(p.relative_to(env) for p in env.rglob("*")) == before  # no store, no cache, no file


def test_verbs_that_need_a_registered_dataset_refuse_files_in_one_line(files, env, capsys):
    log = env / "log.tsv"
    log.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t1.0\n")
    for argv in (["import", log, "--name", "x", "--sigma", 0.25, "--db", env / "r.db"],
                 ["train", "--epochs", 1, "--out", env / "m.pt"]):
        code, _, err = cli(capsys, *argv, "--dataset", f"npz:{files['npz']}")
        assert code == 2 and len(err.strip().splitlines()) == 1 and "unknown dataset 'npz:" in err, err
    assert sorted(p.name for p in env.iterdir()) == ["log.tsv"]


def test_help_names_the_code_running_options_and_imports_no_torch():
    code = ("import sys; from smoothviz.cli import main\n"
            "try:\n    main(['certify', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'LIGHT')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    text = " ".join(done.stdout.split())
    assert done.stdout.strip().endswith("LIGHT"), done.stdout[-200:]
    assert "THIS RUNS YOUR CODE" in text and "loading one can execute code it contains" in text
