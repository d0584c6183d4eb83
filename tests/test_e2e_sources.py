"""In a real browser: upload a reference-code checkpoint, point the Certify page at an image
folder, certify through a background job, and open the run in Compare runs."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from e2e_support import assert_no_exception, shot, wait_idle
from e2e_support import browser, page, server  # noqa: F401  (pytest fixtures)
from smoothviz.reference_archs import ReferenceCifarResNet

pytestmark = pytest.mark.e2e


def test_certify_an_uploaded_reference_checkpoint_on_an_image_folder(server, page, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Identity(), ReferenceCifarResNet(20, 10))
    ckpt = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 1, "arch": "cifar_resnet20", "state_dict": model.state_dict(), "optimizer": {}}, ckpt)
    rng = np.random.default_rng(0)
    folder = tmp_path / "val"
    for c in range(10):
        (folder / f"class{c}").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"class{c}" / "0.png")

    page.goto(f"{server}/Certify?points=3&n0=5&n=40")
    wait_idle(page)
    page.get_by_test_id("stRadio").get_by_text("your files", exact=True).click()
    wait_idle(page)
    data = page.get_by_label(re.compile("^Your data"))
    data.fill(f"imagefolder:{folder}")
    data.press("Enter")
    wait_idle(page)
    page.get_by_test_id("stRadio").get_by_text("a model file", exact=True).click()
    wait_idle(page)
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(ckpt))
    page.wait_for_function(
        "() => [...document.querySelectorAll('input')].some(i => i.value.includes('uploads/'))", timeout=60_000)
    wait_idle(page)
    sigma = page.get_by_label(re.compile("^σ the model was trained with"))
    sigma.fill("0.25")
    sigma.press("Enter")
    wait_idle(page)
    assert_no_exception(page, "certify form with a model file")
    assert page.get_by_text("cifar_resnet20", exact=False).count() >= 1
    shot(page, "certify-model-file")
    run = page.get_by_role("button", name="Run certification")
    assert run.is_enabled()
    run.click()
    page.wait_for_url(re.compile(r".*[?&]run=\d+"), timeout=60_000)
    run_id = re.search(r"[?&]run=(\d+)", page.url).group(1)
    page.get_by_test_id("stAlertContentSuccess").filter(has_text="Done: 3 points").wait_for(timeout=180_000)
    wait_idle(page)
    assert_no_exception(page, f"run {run_id} on an image folder")
    assert page.get_by_text("reference-code checkpoint", exact=False).count() >= 1
    page.get_by_text("Compare this run with others").click()
    page.wait_for_url(re.compile(r".*Compare_runs.*runs=" + run_id), timeout=60_000)
    wait_idle(page)
    assert_no_exception(page, "compare a run on an image folder")
    page.get_by_test_id("stPlotlyChart").first.wait_for(timeout=60_000)
    shot(page, "compare-model-file")
