"""run_certification: executing and resuming store runs, cancel through the store, failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from smoothviz import certify
from smoothviz.errors import CheckpointError, InvalidArgument, SigmaSpecError, StoreError
from smoothviz.models import build_model, save_checkpoint
from smoothviz.store import Store

torch.set_num_threads(1)


@pytest.fixture()
def setup(tmp_path: Path):
    torch.manual_seed(0)
    ckpt = tmp_path / "digits.pt"
    save_checkpoint(ckpt, build_model("cnn-small", (1, 8, 8), 10),
                    {"dataset": "digits", "arch": "cnn-small", "input_shape": [1, 8, 8], "num_classes": 10})
    store = Store(tmp_path / "s.db")
    config = dict(name="t", dataset="digits", split="test", checkpoint=str(ckpt), sigma_spec="constant:0.5",
                  sigma_params={"kind": "constant", "sigma": 0.5}, r=0.0, n0=10, n=300, alpha=0.01,
                  device="cpu", indices=list(range(0, 40, 4)), seed=3, batch_size=128)
    yield store, config, ckpt
    store.close()


def test_run_executes_and_resume_keeps_stored_points(setup) -> None:
    store, config, _ = setup
    run_id = store.create_run(**config)
    sentinel = dict(idx=8, label=0, predict=0, correct=False, p_a_lower=0.75, sigma=0.5, radius=1234.0,
                    naive_radius=1234.0, counts=[], seconds=0.0)
    store.add_result(run_id, sentinel)  # a point stored by an earlier, interrupted execution
    seen = []
    assert certify.run_certification(store, run_id, progress=seen.append) == "done"
    df = store.results(run_id)
    assert df["idx"].tolist() == config["indices"]
    assert df.loc[df.idx == 8, "radius"].item() == 1234.0  # not recomputed
    assert seen[-1]["done"] == seen[-1]["total"] == 9
    info = store.run(run_id)
    assert info["status"] == "done" and info["pid"] is not None
    assert all(sum(c) == 300 for c in df.loc[df.idx != 8, "counts"])


def test_cancel_through_the_store(setup, monkeypatch) -> None:
    store, config, _ = setup
    monkeypatch.setattr(certify, "CANCEL_POLL_SECONDS", 0.0)
    run_id = store.create_run(**config)

    def progress(info: dict) -> None:
        if info["done"] >= 2:
            store.request_cancel(run_id)

    status = certify.run_certification(store, run_id, progress=progress)
    assert status == "cancelled"
    info = store.run(run_id)
    assert info["status"] == "cancelled" and 2 <= info["done"] < 10
    assert "cancelled after" in info["message"]
    assert certify.run_certification(store, run_id) == "done"  # resuming clears the flag
    assert len(store.results(run_id)) == 10


def test_changed_checkpoint_is_refused_before_the_run_is_touched(setup) -> None:
    store, config, ckpt = setup
    run_id = store.create_run(**config)
    before = store.run(run_id)
    save_checkpoint(ckpt, build_model("cnn-small", (1, 8, 8), 10),
                    {"dataset": "digits", "arch": "cnn-small", "input_shape": [1, 8, 8], "num_classes": 10})
    with pytest.raises(CheckpointError, match="changed since run 1 was created"):
        certify.run_certification(store, run_id)
    after = store.run(run_id)
    assert after["status"] == "pending" and after["message"] == before["message"]
    assert after["updated"] == before["updated"] and len(store.results(run_id)) == 0


@pytest.mark.parametrize("change, error, match", [
    ({"indices": [0, 400]}, InvalidArgument, "outside the test split"),
    ({"sigma_spec": "knn:0.25,0.4,5000"}, SigmaSpecError, "exceeds the 1436 other training points"),
    ({"sigma_spec": "knn:0.25,100,20"}, SigmaSpecError, "outside"),
    ({"n0": 500}, InvalidArgument, "n0 must be in"),
    ({"options": {"turbo": True}}, InvalidArgument, "unknown engine options"),
    ({"batch_size": 10**12}, InvalidArgument, "a batch needs about"),
])
def test_a_recorded_run_that_cannot_execute_is_refused_untouched(setup, change, error, match) -> None:
    store, config, _ = setup
    run_id = store.create_run(**{**config, **change})
    before = store.run(run_id)
    with pytest.raises(error, match=match):
        certify.run_certification(store, run_id)
    after = store.run(run_id)
    assert (after["status"], after["message"], after["updated"]) == (before["status"], before["message"],
                                                                     before["updated"])
    assert len(store.results(run_id)) == 0


def test_nan_weights_are_refused_before_sampling(setup, tmp_path: Path) -> None:
    store, config, _ = setup
    model = build_model("cnn-small", (1, 8, 8), 10)
    with torch.no_grad():
        model[1][0].weight[0, 0, 0, 0] = float("nan")
    bad = tmp_path / "nan.pt"
    save_checkpoint(bad, model, {"dataset": "digits", "arch": "cnn-small", "input_shape": [1, 8, 8], "num_classes": 10})
    run_id = store.create_run(**{**config, "checkpoint": str(bad)})
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        certify.run_certification(store, run_id)
    assert store.run(run_id)["status"] == "pending" and len(store.results(run_id)) == 0


def test_prepared_run_holds_checked_sigmas_and_warns_about_absurd_spans(setup) -> None:
    _, config, _ = setup
    plain = certify.prepare_run({**config, "sigma_spec": "knn:0.25,0.4,20"})
    assert plain.sigma_warning is None and plain.sigmas.shape == (len(config["indices"]),)
    expected = plain.sigma_fn(plain.dataset.test_x[config["indices"]])
    assert torch.allclose(plain.sigmas, expected)  # sigma(x) of the run's points, in their order
    wild = certify.prepare_run({**config, "sigma_spec": "knn:0.25,100,20,min=1e-6,max=100"})
    assert "spans" in wild.sigma_warning and "limit" in wild.sigma_warning


def test_imported_runs_cannot_be_executed(setup, tmp_path: Path) -> None:
    store, _, _ = setup
    log = tmp_path / "l.tsv"
    log.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t1.0\n")
    from smoothviz.store import import_cohen_log

    run_id = import_cohen_log(store, log, "imp", "digits", 0.25)
    with pytest.raises(StoreError, match="imported"):
        certify.run_certification(store, run_id)


def test_make_classifier_defaults_and_unknown_options() -> None:
    model = build_model("cnn-small", (1, 8, 8), 10)
    clf, size = certify.make_classifier(model, {}, "cpu", None, (1, 8, 8))
    assert size == 256 and clf.applied["channels_last"] is True  # CPU defaults for images
    clf, _ = certify.make_classifier(model, {"channels_last": False}, "cpu", 64, (1, 8, 8))
    assert clf.applied["channels_last"] is False
    mlp = build_model("mlp", (2,), 2)
    clf, _ = certify.make_classifier(mlp, {}, "cpu", 64, (2,))
    assert clf.applied["channels_last"] is False
    with pytest.raises(InvalidArgument, match="unknown engine options"):
        certify.make_classifier(model, {"turbo": True}, "cpu", 64, (1, 8, 8))


def test_keep_cpu_buffers_on_glibc() -> None:
    import platform

    from smoothviz.device import keep_cpu_buffers

    if platform.libc_ver()[0] != "glibc":
        print("not glibc: keep_cpu_buffers only has to return without error")
        keep_cpu_buffers()
        return
    assert keep_cpu_buffers() is True


def test_a_ddrs_run_stores_the_naive_radius_and_a_sound_radius_of_zero(setup) -> None:
    """Data-dependent sigma (no semi-elasticity): the run certifies end to end on the shipped digits CNN,
    records r as NULL, stores sigma(x) from the grid, the naive radius sigma(x) Phi^-1(p_A) and a sound
    radius of 0; its audit result is a run option the engine accepts."""
    from scipy import special

    from smoothviz.ddrs import DataDependentSigma

    store, config, _ = setup
    root = Path(__file__).resolve().parents[1]
    spec = "ddrs:0.12,0.5,3,n=32,alpha=0.01,seed=0"
    run_id = store.create_run(**{**config, "checkpoint": str(root / "assets" / "digits-cnn-constant-0.25.pt"),
                                 "sigma_spec": spec, "sigma_params": {}, "r": None, "indices": list(range(6)),
                                 "options": {"sigma_audit": {"audited_r": 3.5, "declared_r": None}}})
    assert store.run(run_id)["r"] is None
    prepared = certify.prepare_run(store.run(run_id))
    assert isinstance(prepared.sigma_fn, DataDependentSigma) and prepared.sigma_fn.r is None
    assert certify.run_certification(store, run_id, prepared=prepared) == "done"
    df = store.results(run_id)
    certified = df["predict"] != certify.ABSTAIN
    assert certified.sum() >= 4  # a trained model on clean digits
    assert (df["radius"] == 0).all()
    expected = df["sigma"] * special.ndtri(df["p_a_lower"])
    assert (df.loc[certified, "naive_radius"] - expected[certified]).abs().max() < 1e-9
    assert (df.loc[certified, "naive_radius"] > 0).all() and (df.loc[~certified, "naive_radius"] == 0).all()
    grid = set(prepared.sigma_fn.sigmas)
    assert all(any(abs(s - g) < 1e-6 for g in grid) for s in df["sigma"])
    info = store.run(run_id)
    assert info["r"] is None and info["sigma_params"]["kind"] == "ddrs"
    with pytest.raises(InvalidArgument, match="without semi-elasticity"):
        certify.prepare_run({**store.run(run_id), "sequential": {"mode": "radius"}})
