"""Certify and Sample explorer pages with a foreign model and the user's files (AppTest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from apptest_support import open_page, plotly_figures, wait_for
from apptest_support import fresh_app_state  # noqa: F401  (autouse: a temporary store, no shared caches)
from smoothviz.model_sources import archive_metadata
from smoothviz.reference_archs import ReferenceCifarResNet
from smoothviz.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_checkpoint(path: Path) -> Path:
    """A checkpoint in the reference code's layout (Sequential(NormalizeLayer, ResNet-20): keys 1.*)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Identity(), ReferenceCifarResNet(20, 10))
    torch.save({"epoch": 3, "arch": "cifar_resnet20", "state_dict": model.state_dict(), "optimizer": {}}, path)
    return path


def image_folder(root: Path, classes: int = 10, per_class: int = 1, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c:02d}").mkdir(parents=True)
        for j in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                root / f"class{c:02d}" / f"{j}.png")
    return root


def fill_foreign(at, model: Path, data: str, sigma: float | None = 0.25):
    """Choose a model file and the user's files on the Certify page."""
    at.radio(key="data_mode").set_value("your files").run()
    at.text_input(key="data_source").set_value(data).run()
    at.radio(key="model_mode").set_value("a model file").run()
    at.text_input(key="model_path").set_value(str(model)).run()
    if sigma is not None:
        at.number_input(key="model_sigma").set_value(sigma).run()
    return at


def test_certify_a_reference_checkpoint_on_an_image_folder(tmp_path):
    ckpt = reference_checkpoint(tmp_path / "checkpoint.pth.tar")
    folder = image_folder(tmp_path / "val", per_class=1)
    at = open_page("pages/2_Certify.py", points="3", n0="5", n="40")
    fill_foreign(at, ckpt, f"imagefolder:{folder}")
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    key = f"@{ckpt}"
    assert at.radio(key="kind" + key).value == "constant"
    assert at.number_input(key="sigma" + key).value == pytest.approx(0.25)  # the trained σ is the default
    assert any("cifar_resnet20" in c.value for c in at.caption)
    assert "ckpt" not in at.query_params and "dataset" not in at.query_params  # paths stay out of the link
    at.button(key="run_button").click().run()
    wait_for(at, lambda a: any("Done: 3 points" in s.value for s in a.success), timeout=180)
    assert not at.exception, [e.message for e in at.exception]
    store = Store(tmp_path / "runs" / "test.db")
    run = store.run(1)
    assert run["dataset"] == f"imagefolder:{folder}" and run["checkpoint"] == str(ckpt)
    assert run["options"]["model"]["source"] == "reference" and run["options"]["model"]["trained_sigma"] == 0.25
    assert len(store.results(1)) == 3

    compare = open_page("pages/3_Compare_runs.py", runs="1")
    assert not compare.exception, [e.message for e in compare.exception]
    assert plotly_figures(compare)


def test_certify_names_a_model_that_does_not_fit_the_data(tmp_path):
    ckpt = reference_checkpoint(tmp_path / "checkpoint.pth.tar")
    at = open_page("pages/2_Certify.py")
    fill_foreign(at, ckpt, f"imagefolder:{image_folder(tmp_path / 'three', classes=3)}")
    assert any("gives 10 classes, but imagefolder" in e.value for e in at.error), [e.value for e in at.error]
    assert not at.get("button") or all(b.key != "run_button" for b in at.button)
    small = image_folder(tmp_path / "small", size=8)
    at.text_input(key="data_source").set_value(f"imagefolder:{small}").run()
    assert any("takes inputs of shape [3, 32, 32]" in e.value for e in at.error)


def test_certify_refuses_archives_and_points_to_the_command_line(tmp_path):
    path = tmp_path / "model.pt"
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    torch.jit.save(torch.jit.script(net), str(path), _extra_files=archive_metadata((3, 32, 32), 10))
    at = open_page("pages/2_Certify.py")
    fill_foreign(at, path, f"imagefolder:{image_folder(tmp_path / 'val')}")
    assert any("the dashboard never does" in e.value and "--trust-archive" in e.value for e in at.error)
    assert not at.exception


def test_certify_knn_on_files_needs_reference_points(tmp_path):
    ckpt = reference_checkpoint(tmp_path / "checkpoint.pth.tar")
    at = open_page("pages/2_Certify.py", points="2")
    fill_foreign(at, ckpt, f"imagefolder:{image_folder(tmp_path / 'val')}")
    key = f"@{ckpt}"
    at.radio(key="kind" + key).set_value("knn").run()
    at.number_input(key="k" + key).set_value(3).run()
    assert at.button(key="run_button").disabled  # an image folder has no training points: k counts nothing
    assert any("k = 3 is outside [1, 0]" in e.value for e in at.error), [e.value for e in at.error]
    at.text_input(key="sigma_reference").set_value(f"imagefolder:{image_folder(tmp_path / 'train')}").run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.button(key="run_button").disabled, [e.value for e in at.error]
    hist = next(f for f in plotly_figures(at) if "σ(x)" in f["layout"].get("title", {}).get("text", ""))
    assert len(hist["data"][0]["x"]) == 2


def test_uploads_are_kept_by_content(tmp_path, monkeypatch):
    from pages._ui import save_upload

    monkeypatch.setenv("SMOOTHVIZ_DB", str(tmp_path / "runs" / "x.db"))
    first = save_upload("../../evil name.pth", b"weights")
    assert first.parent == tmp_path / "runs" / "uploads" and first.name.endswith("-evil_name.pth")
    assert save_upload("other.pth", b"weights").name.split("-")[0] == first.name.split("-")[0]
    assert save_upload("x.pth", b"other").name.split("-")[0] != first.name.split("-")[0]
    assert first.read_bytes() == b"weights"


def test_explorer_shows_a_point_of_the_users_files(tmp_path):
    ckpt = reference_checkpoint(tmp_path / "checkpoint.pth.tar")
    folder = image_folder(tmp_path / "val")
    at = open_page("pages/4_Sample_explorer.py")
    at.sidebar.radio(key="ex_model_mode").set_value("a model file").run()
    at.sidebar.text_input(key="ex_model_path").set_value(str(ckpt)).run()
    at.sidebar.text_input(key="ex_data_source").set_value(f"imagefolder:{folder}").run()
    at.sidebar.text_input(key="ex_sigma").set_value("constant:0.25").run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert [m.label for m in at.metric][:3] == ["True label", "Smoothed prediction", "σ(x)"]
    assert at.metric[0].value == "class00"
    at.sidebar.number_input(key="ex_idx").set_value(4).run()
    assert at.metric[0].value == "class04"
