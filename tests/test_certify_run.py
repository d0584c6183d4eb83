"""run_certification: executing and resuming store runs, cancel through the store, failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from smoothviz import certify
from smoothviz.errors import CheckpointError, StoreError
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


def test_changed_checkpoint_fails_the_run(setup) -> None:
    store, config, ckpt = setup
    run_id = store.create_run(**config)
    save_checkpoint(ckpt, build_model("cnn-small", (1, 8, 8), 10),
                    {"dataset": "digits", "arch": "cnn-small", "input_shape": [1, 8, 8], "num_classes": 10})
    with pytest.raises(CheckpointError, match="changed"):
        certify.run_certification(store, run_id)
    info = store.run(run_id)
    assert info["status"] == "failed" and "changed" in info["message"]


def test_imported_runs_cannot_be_executed(setup, tmp_path: Path) -> None:
    store, _, _ = setup
    log = tmp_path / "l.tsv"
    log.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t1.0\n")
    from smoothviz.store import import_cohen_log

    run_id = import_cohen_log(store, log, "imp", "digits", 0.25)
    with pytest.raises(StoreError, match="imported"):
        certify.run_certification(store, run_id)


def test_make_classifier_defaults_and_unknown_options() -> None:
    from smoothviz.errors import InvalidArgument

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
