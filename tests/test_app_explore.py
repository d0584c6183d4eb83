"""Sample explorer, 2-D playground and Train pages under AppTest: URL state, widgets -> figure JSON,
messages instead of tracebacks, and a real training job from start to finished checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm
from streamlit.testing.v1 import AppTest

import apptest_support as support
from apptest_support import fresh_app_state  # noqa: F401  (autouse: a temporary store, no shared caches)
from smoothviz import bounds, data, models

START = "FormSubmitter:train_form-Start training"  # the Train page's submit button


def constant_checkpoint(folder: Path) -> Path:
    """A second digits MLP in ``folder``, trained (its metadata says) with constant sigma 0.12; listed first."""
    info = data.DATASET_INFO["digits"]
    other = folder / "digits-const.pt"
    models.save_checkpoint(other, models.build_model("mlp", info.input_shape, info.num_classes), {
        "dataset": "digits", "arch": "mlp", "input_shape": list(info.input_shape),
        "num_classes": info.num_classes, "sigma": "constant:0.12", "sigma_params": {}, "r": 0.0,
    })
    return other


@pytest.fixture
def digits_checkpoint(tmp_path, monkeypatch):
    """An (untrained, seeded) digits MLP whose metadata says it was trained with a kNN sigma."""
    torch.manual_seed(0)
    return support.save_digits_checkpoint(tmp_path / "ckpt", monkeypatch, "knn:0.3,0.5,10", 0.5)


def open_page(page: str, **query: str) -> AppTest:
    """``page`` with ``query`` in the URL after its first run, which must raise nothing."""
    at = support.open_page(page, **query)
    assert not at.exception, [e.message for e in at.exception]
    return at


def figures(at: AppTest) -> dict[str, dict]:
    """Every plotly figure on the page by title (images without a title are keyed by their first subplot title)."""
    out = {}
    for fig in support.plotly_figures(at):
        title = (fig["layout"].get("title") or {}).get("text") or fig["layout"]["annotations"][0]["text"]
        out[title] = fig
    return out


def find(figs: dict[str, dict], start: str) -> dict:
    hits = [f for t, f in figs.items() if t.startswith(start)]
    assert hits, f"no figure titled {start!r} among {list(figs)}"
    return hits[0]


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


# ---------------------------------------------------------------- sample explorer
def test_explorer_from_url_with_knn_sigma(digits_checkpoint):
    at = open_page("pages/4_Sample_explorer.py", idx="7", n="1000")
    assert at.number_input(key="ex_idx").value == 7
    assert at.text_input(key="ex_sigma").value == "knn:0.3,0.5,10"  # default from the checkpoint
    figs = figures(at)
    assert any(t.startswith("#7 · label") for t in figs)
    context = find(figs, "σ(x) over 360 test points")
    assert len(context["data"][0]["x"]) == 360  # digits has 360 test points, all of them shown
    assert context["layout"]["shapes"][0]["x0"] == pytest.approx(float(metric(at, "σ(x)")), abs=1e-4)
    nb = find(figs, "The k = 10 nearest training images")
    assert [t["type"] for t in nb["data"]] == ["image"] * 10
    noisy = find(figs, "16 noisy copies")
    assert len(noisy["data"]) == 16
    votes = find(figs, "Votes of the base classifier on n = 1,000")
    assert sum(votes["data"][0]["y"]) == 1000
    assert votes["layout"]["xaxis"]["title"]["text"] == "class"
    radius = find(figs, "Certified L2 radius")["data"][0]["x"]
    assert float(metric(at, "Sound radius")) == pytest.approx(radius[0], abs=1e-4)
    assert float(metric(at, "Naive radius")) == pytest.approx(radius[1], abs=1e-4)
    assert any("not a guarantee" in el.value for el in at.info)
    assert at.query_params["ckpt"] == str(digits_checkpoint) or at.query_params["ckpt"].endswith("digits-mlp.pt")
    assert at.query_params["sigma"] == "knn:0.3,0.5,10"

    at.number_input(key="ex_idx").set_value(12).run()
    assert at.query_params["idx"] == "12"
    assert any(t.startswith("#12 · label") for t in figures(at))

    at.button(key="ex_random").click().run()
    assert not at.exception, [e.message for e in at.exception]
    idx = at.number_input(key="ex_idx").value
    assert at.query_params["idx"] == str(idx)
    assert any(t.startswith(f"#{idx} · label") for t in figures(at))


def test_explorer_constant_sigma_and_bad_spec(digits_checkpoint):
    at = open_page("pages/4_Sample_explorer.py", sigma="constant:0.3", n="1000")
    figs = figures(at)
    assert not any(t.startswith("The k =") for t in figs)
    assert any("Constant σ = 0.3000" in m.value for m in at.markdown)
    assert float(metric(at, "σ(x)")) == pytest.approx(0.3)
    # constant sigma: the sound and the naive radius are the same number
    assert metric(at, "Sound radius") == metric(at, "Naive radius")

    at.text_input(key="ex_sigma").set_value("knn:abc").run()
    assert not at.exception
    assert any("knn:abc" in e.value for e in at.error)


def test_explorer_checkpoint_change_brings_its_sigma(digits_checkpoint):
    other = constant_checkpoint(digits_checkpoint.parent)
    at = open_page("pages/4_Sample_explorer.py", n="1000")
    assert at.selectbox(key="ex_ckpt").value == str(other)  # sorted by path: digits-const.pt first
    assert at.text_input(key="ex_sigma").value == "constant:0.12"
    at.selectbox(key="ex_ckpt").set_value(str(digits_checkpoint)).run()
    assert at.text_input(key="ex_sigma").value == "knn:0.3,0.5,10"
    assert at.query_params["sigma"] == "knn:0.3,0.5,10"
    assert find(figures(at), "The k = 10 nearest")

    at.selectbox(key="ex_dataset").set_value("fashion-mnist").run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.warning or at.error  # no fashion-mnist checkpoint here (or no data): a message, not a traceback


def test_explorer_applies_a_link_on_every_entry_not_only_the_first(digits_checkpoint):
    other = constant_checkpoint(digits_checkpoint.parent)
    at = open_page("pages/4_Sample_explorer.py", n="1000")
    assert at.selectbox(key="ex_ckpt").value == str(other)
    at.switch_page("app.py").run()  # elsewhere, then back through a link (e.g. from the Train page)
    at.switch_page("pages/4_Sample_explorer.py")
    at.query_params.update({"ckpt": str(digits_checkpoint), "sigma": "knn:0.3,0.5,7", "idx": "9", "n": "1000"})
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.selectbox(key="ex_ckpt").value == str(digits_checkpoint)
    assert at.text_input(key="ex_sigma").value == "knn:0.3,0.5,7" and at.number_input(key="ex_idx").value == 9
    assert find(figures(at), "The k = 7 nearest")


def test_explorer_redirects_2d_data_and_reports_missing_checkpoints(tmp_path, monkeypatch):
    empty = tmp_path / "none"
    empty.mkdir()
    monkeypatch.setenv("SMOOTHVIZ_CHECKPOINTS", str(empty))
    at = open_page("pages/4_Sample_explorer.py", dataset="toy2d-moons")
    assert any("2-D playground" in el.value for el in at.info)
    assert at.selectbox(key="ex_dataset").value == "digits"
    assert any("No checkpoint trained on **digits**" in w.value for w in at.warning)


# ---------------------------------------------------------------- 2-D playground
def test_playground_maps_circles_and_url_state():
    at = open_page("pages/5_2D_playground.py", res="30", n="100", pts="4,9", r="3")
    assert at.multiselect(key="pg_points").value == [4, 9]
    assert at.number_input(key="pg_r").value == pytest.approx(3.0)
    figs = figures(at)
    base = find(figs, "Base classifier f")
    assert np.asarray(base["data"][0]["z"]).shape == (30, 30)
    ids = sorted(int(c) for t in base["data"][1:] for c in t.get("customdata", []))
    assert ids == list(range(500))  # every test point is selectable by its index
    sig = find(figs, "kNN σ(x) (σ_b = 0.1, r = 3, k = 10)")
    assert sig["data"][0]["colorbar"]["title"]["text"] == "σ(x) (log scale)"
    np.testing.assert_allclose(np.log10(sig["data"][0]["customdata"]), sig["data"][0]["z"], rtol=1e-9)
    const = find(figs, "Constant σ = 0.1")
    knn = find(figs, "Input-dependent σ(x), r = 3")
    for fig in (base, sig, const, knn):
        assert fig["layout"]["xaxis"]["title"]["text"] and fig["layout"]["yaxis"]["title"]["text"]
        assert all(t["type"] != "scattergl" for t in fig["data"])

    table = at.dataframe[0].value
    knn_rows = table[table["σ function"] == "kNN σ(x)"]
    assert list(knn_rows["test #"]) == [4, 9]
    certified = knn_rows[knn_rows["prediction"] != "abstain"]
    assert len(certified) >= 1
    # the circles drawn are the sound radii (solid) and the naive radii (dashed) of the table
    solid = sorted({round((s["x1"] - s["x0"]) / 2, 9) for s in knn["layout"]["shapes"] if s["line"]["dash"] == "solid"})
    dashed = sorted({round((s["x1"] - s["x0"]) / 2, 9) for s in knn["layout"]["shapes"] if s["line"]["dash"] == "dash"})
    assert solid == pytest.approx(sorted(certified["sound radius"]), rel=1e-6)
    assert dashed == pytest.approx(sorted(certified["naive radius (not a guarantee)"]), rel=1e-6)
    for _, row in certified.iterrows():
        sound = float(bounds.input_dependent_radius(row["p_A lower"], row["σ(x)"], 3.0, 2))
        assert row["sound radius"] == pytest.approx(sound, rel=1e-9)
    # constant sigma: one solid ring per certified point, Cohen's radius
    const_rows = table[(table["σ function"] == "constant") & (table["prediction"] != "abstain")]
    assert all(s["line"]["dash"] == "solid" for s in const["layout"]["shapes"])
    assert len(const["layout"]["shapes"]) == 2 * len(const_rows)  # halo + line
    for _, row in const_rows.iterrows():
        assert row["sound radius"] == pytest.approx(0.1 * norm.ppf(row["p_A lower"]), rel=1e-7)


def test_playground_form_drives_sigma_and_points():
    at = open_page("pages/5_2D_playground.py", res="30", n="100", pts="1")
    at.number_input(key="pg_r").set_value(0.0)
    at.number_input(key="pg_sigma").set_value(0.2)
    at.button(key="FormSubmitter:pg_form-Update").click().run()
    assert not at.exception, [e.message for e in at.exception]
    figs = figures(at)
    assert "kNN σ(x) (σ_b = 0.2, r = 0, k = 10)" in figs
    sig_map = figs["kNN σ(x) (σ_b = 0.2, r = 0, k = 10)"]["data"][0]
    np.testing.assert_allclose(np.asarray(sig_map["customdata"]), 0.2, rtol=1e-6)  # r = 0: sigma(x) is constant
    np.testing.assert_allclose(np.asarray(sig_map["z"]), np.log10(0.2), rtol=1e-6)  # coloured on a log scale
    assert at.query_params["sigma"] == "0.2" and at.query_params["r"] == "0"
    at.multiselect(key="pg_points").set_value([]).run()
    assert "pts" not in at.query_params
    assert any("Choose test points" in el.value for el in at.info)


# ---------------------------------------------------------------- train
def _wait_for_job(at: AppTest, timeout_s: float = 150.0) -> AppTest:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        at.run()
        if at.success or at.error or at.warning:
            return at
        time.sleep(1.0)
    raise AssertionError("the training job did not finish in time")


def test_train_job_runs_to_a_checkpoint_and_survives_reload(tmp_path):
    at = open_page("pages/6_Train.py", dataset="toy2d-moons")
    assert at.selectbox(key="tr_dataset").value == "toy2d-moons"
    at.number_input(key="tr_epochs").set_value(3)
    at.text_input(key="tr_name").set_value("moons-test")
    at.text_input(key="tr_spec").set_value("knn:0.1,2,10")
    at.button(key=START).click().run()
    assert not at.exception, [e.message for e in at.exception]
    job_id = at.query_params["job"]
    assert job_id.startswith("train-")
    _wait_for_job(at)
    assert any("Training finished" in s.value for s in at.success), [e.value for e in at.error]
    out = tmp_path / "runs" / "checkpoints" / "moons-test.pt"
    model, meta = models.load_checkpoint(out, expected_dataset="toy2d-moons")
    assert meta["epochs"] == 3 and meta["arch"] == "mlp"
    assert meta["sigma"].startswith("knn:0.1,2.0,10") and meta["r"] == 2.0
    curves = find(figures(at), "Training progress")
    assert curves["data"][0]["x"] == [1, 2, 3]
    assert models.list_checkpoints(dirs=(str(out.parent),), dataset="toy2d-moons")[0][0] == out

    # a reload is a new session: the job id in the URL finds the finished job
    again = open_page("pages/6_Train.py", job=job_id)
    assert any("Training finished" in s.value for s in again.success)

    # the new checkpoint is offered on the Certify page
    certify = open_page("pages/2_Certify.py", dataset="toy2d-moons")
    assert any(o.endswith("moons-test.pt") for o in certify.selectbox(key="ckpt").options)

    # the same name again is refused with a message
    at.text_input(key="tr_name").set_value("moons-test")
    at.button(key=START).click().run()
    assert any("already exists" in e.value for e in at.error)


def test_train_rejects_bad_choices_without_starting():
    at = open_page("pages/6_Train.py")
    at.text_input(key="tr_name").set_value("bad name!")
    at.button(key=START).click().run()
    assert any("bad name!" in e.value for e in at.error)
    assert "job" not in at.query_params
    at.text_input(key="tr_name").set_value("")
    at.text_input(key="tr_spec").set_value("knn:0.25,oops,20")
    at.button(key=START).click().run()
    assert any("knn:0.25,oops,20" in e.value for e in at.error) and "job" not in at.query_params
    at.text_input(key="tr_spec").set_value("")
    at.selectbox(key="tr_arch").set_value("resnet20")
    at.selectbox(key="tr_dataset").set_value("toy2d-moons")
    at.button(key=START).click().run()
    assert any("resnet20" in e.value for e in at.error) and "job" not in at.query_params
    if not torch.cuda.is_available():
        at.selectbox(key="tr_arch").set_value("default for the dataset")
        at.selectbox(key="tr_device").set_value("cuda")
        at.button(key=START).click().run()
        assert any("CUDA is not available" in e.value for e in at.error) and "job" not in at.query_params


def test_train_cancel(tmp_path):
    at = open_page("pages/6_Train.py", dataset="digits")
    at.number_input(key="tr_epochs").set_value(500)  # long enough to still run when cancelled
    at.button(key=START).click().run()
    job_id = at.query_params["job"]
    cancel = next(b for b in at.button if b.label == "Cancel training")
    cancel.click().run()
    _wait_for_job(at, 60)
    assert any("cancelled" in w.value for w in at.warning)
    assert not list((tmp_path / "runs" / "checkpoints").glob("digits-*.pt"))
    assert job_id in at.selectbox(key="train_pick").options

    # resuming starts the same command as a new job (then cancel it again: no stray process)
    at.button(key="train_resume").click().run()
    new_id = at.query_params["job"]
    assert new_id != job_id
    from smoothviz.jobs import JobManager

    jm = JobManager(tmp_path / "runs" / "jobs")
    old, new = jm.get(job_id), jm.get(new_id)
    strip = lambda argv: [a for a in argv if "progress" not in a]  # noqa: E731
    assert strip(new.argv) == strip(old.argv) and new.extra == old.extra
    assert jm.cancel(new_id)
    assert jm.wait(new_id, timeout=30).status == "cancelled"
