"""smoothviz.cost: estimates scale as the work does, recorded rates are used, memory and long jobs
are refused before anything is written. No test here depends on how fast this machine is."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from smoothviz import cost
from smoothviz.cli import main
from smoothviz.errors import InvalidArgument
from smoothviz.models import build_model, save_checkpoint
from smoothviz.store import Store, file_sha256

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "digits.pt"
    save_checkpoint(path, build_model("cnn-small", (1, 8, 8), 10),
                    {"dataset": "digits", "arch": "cnn-small", "input_shape": [1, 8, 8], "num_classes": 10,
                     "sigma": "constant:0.25"})
    return path


def test_durations_read_as_english():
    assert cost.duration_text(0.2) == "under a second"
    assert cost.duration_text(40) == "about 40 s"
    assert cost.duration_text(180) == "about 3 min"
    assert cost.duration_text(2.5 * 3600) == "about 2.5 h"
    assert cost.duration_text(3.2 * 86_400) == "about 3.2 days"
    assert cost.duration_text(1600 * 365.25 * 86_400) == "about 1,600 years"


def test_certify_estimate_is_linear_in_points_and_samples_and_says_how():
    rate = cost.Rate(21_000.0, "measured now")
    base = cost.estimate_certify(360, 100, 10_000, rate)
    assert base.seconds == pytest.approx(360 * 10_100 / 21_000)
    assert cost.estimate_certify(720, 100, 10_000, rate).seconds == pytest.approx(2 * base.seconds)
    assert cost.estimate_certify(360, 200, 20_000, rate).seconds == pytest.approx(2 * base.seconds)
    slower = cost.estimate_certify(360, 100, 10_000, cost.Rate(7_000.0, "measured now"))
    assert slower.seconds == pytest.approx(3 * base.seconds)
    assert base.text == "about 3 min (360 points × 10,100 samples at 21,000 samples/s, measured now)"
    one = cost.estimate_certify(1, 0, 1, cost.Rate(2.5, "recorded by bench on 2026-12-01"))
    assert "1 point × 1 sample at 2.5 samples/s, recorded by bench on 2026-12-01" in one.text
    with pytest.raises(InvalidArgument, match="rate must be > 0"):
        cost.estimate_certify(1, 1, 1, cost.Rate(0.0, "x"))


def test_train_estimate_is_linear_in_epochs():
    one = cost.estimate_train(1, 12, 128, 4.0)
    assert one.seconds == pytest.approx(3.0) and "1 epoch × 12 batches of 128 at 4 batches/s" in one.text
    assert cost.estimate_train(10, 12, 128, 4.0).seconds == pytest.approx(10 * one.seconds)


def test_long_jobs_warn_and_need_the_flag_beyond_a_day():
    assert cost.LONG_JOB_SECONDS < cost.REFUSE_WITHOUT_FLAG_SECONDS == 86_400
    rate = cost.Rate(1.0, "measured now")
    short = cost.estimate_certify(1, 0, int(cost.LONG_JOB_SECONDS) - 1, rate)
    long = cost.estimate_certify(1, 0, int(cost.LONG_JOB_SECONDS) + 1, rate)
    huge = cost.estimate_certify(1, 0, 86_401, rate)
    assert not short.long and long.long and not long.needs_flag and huge.needs_flag
    cost.refuse_long(long, "this certification", False, "--n")
    cost.refuse_long(huge, "this certification", True, "--n")
    with pytest.raises(InvalidArgument, match="more than a day; add --allow-long .* or lower --n"):
        cost.refuse_long(huge, "this certification", False, "--n")


def test_seed_range():
    assert cost.check_seed(0) == 0 and cost.check_seed(cost.SEED_MAX) == cost.SEED_MAX
    for bad in (-1, cost.SEED_MAX + 1, 2**70, True, 1.5):
        with pytest.raises(InvalidArgument, match="--seed"):
            cost.check_seed(bad)


def test_memory_check_scales_with_batch_and_threads(monkeypatch):
    import smoothviz.speed as speed

    monkeypatch.setattr(speed, "available_memory", lambda device: 10 * 2**20)  # 10 MiB free
    need = cost.check_memory((1, 8, 8), 100, "cpu", bytes_per_sample=1000)
    assert need == 100 * 1000
    assert cost.check_memory((1, 8, 8), 100, "cpu", bytes_per_sample=1000, threads=4) == 4 * need
    assert cost.check_memory((1, 8, 8), 100, "cpu") == 100 * 3 * 64 * 4  # noise, noisy input, buffer
    with pytest.raises(InvalidArgument, match=r"--batch-size 10000: a batch needs about .* 10 MiB free"):
        cost.check_memory((1, 8, 8), 10_000, "cpu", bytes_per_sample=1000)
    with pytest.raises(InvalidArgument, match="across 8 sampling threads"):
        cost.check_memory((1, 8, 8), 2_000, "cpu", bytes_per_sample=1000, threads=8)


def test_measure_rate_runs_the_engine_in_batches():
    sizes = []

    def classify(batch: torch.Tensor) -> torch.Tensor:
        sizes.append(batch.shape[0])
        return torch.zeros(batch.shape[0], dtype=torch.int64)

    rate = cost.measure_rate(classify, (1, 8, 8), 10, 64, "cpu", seconds=0.01)
    assert math.isfinite(rate) and rate > 0
    assert sizes and max(sizes) <= 64 and sum(sizes) >= 8 + 64


def test_sample_rate_uses_the_recorded_rate_without_measuring(checkpoint, tmp_path, monkeypatch):
    cache = tmp_path / "rates.json"
    key = cost.rate_key(file_sha256(checkpoint), "cpu", 64, {})
    assert cost.record_rate(key, 1234.5, "bench", cache)
    monkeypatch.setattr(cost, "measure_rate", lambda *a, **k: pytest.fail("a recorded rate must not be measured"))
    rate = cost.sample_rate(checkpoint, "cpu", 64, {}, cache=cache)
    assert rate.samples_per_second == 1234.5 and rate.source.startswith("recorded by bench on 20")


def test_a_rate_is_recorded_per_batch_size_and_options(checkpoint, tmp_path):
    cache = tmp_path / "rates.json"
    key64 = cost.rate_key(file_sha256(checkpoint), "cpu", 64, {})
    cost.record_rate(key64, 1234.5, "bench", cache)
    assert cost.recorded_rate(cost.rate_key(file_sha256(checkpoint), "cpu", 128, {}), cache) is None
    assert cost.recorded_rate(cost.rate_key(file_sha256(checkpoint), "cpu", 64, {"channels_last": False}), cache) is None
    assert cost.recorded_rate(cost.rate_key("0" * 64, "cpu", 64, {}), cache) is None
    cost.record_rate(key64, 999.0, "certify run 3", cache)  # the newest figure replaces the older one
    assert cost.recorded_rate(key64, cache).samples_per_second == 999.0
    assert "certify run 3" in cost.recorded_rate(key64, cache).source
    assert not cost.record_rate(key64, float("nan"), "bench", cache)


def test_sample_rate_measures_and_writes_nothing_without_a_record(checkpoint, tmp_path):
    cache = tmp_path / "sub" / "rates.json"
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rates.json").write_text("{not json")
    rate = cost.sample_rate(checkpoint, "cpu", 64, {}, cache=cache)
    assert rate.source == "measured now" and rate.samples_per_second > 0
    assert cache.read_text() == "{not json"  # an unreadable cache is ignored, not rewritten
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["rates.json", "sub"]


def test_rates_file_lies_next_to_the_store(tmp_path, monkeypatch):
    assert cost.rates_file(tmp_path / "r.db") == tmp_path / "r-rates.json"
    monkeypatch.setenv("SMOOTHVIZ_DB", str(tmp_path / "env.db"))
    assert cost.rates_file() == tmp_path / "env-rates.json"


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_certify_refuses_a_long_run_before_any_row_and_runs_it_with_the_flag(checkpoint, tmp_path, capsys):
    db = tmp_path / "r.db"
    key = cost.rate_key(file_sha256(checkpoint), "cpu", 64, {})
    cost.record_rate(key, 0.001, "bench", cost.rates_file(db))  # a pretend rate: 2 points would take days
    argv = ["certify", "--model", checkpoint, "--n0", 10, "--n", 200, "--points", 2, "--batch-size", 64,
            "--device", "cpu", "--db", db, "--quiet"]
    code, _, err = _cli(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "more than a day; add --allow-long" in err and "recorded by bench on" in err
    assert not db.exists()  # refused before the store was created
    code, out, err = _cli(capsys, *argv, "--allow-long")
    assert code == 0, err
    assert "estimate: about 4.9 days (2 points × 210 samples at 0.001 samples/s, recorded by bench on" in err
    with Store(db) as s:
        assert len(s.results(1)) == 2


def test_certify_records_its_rate_for_the_next_estimate(checkpoint, tmp_path, capsys, monkeypatch):
    db = tmp_path / "r.db"
    monkeypatch.setattr(cost, "MIN_RECORD_SECONDS", 0.0)
    argv = ["certify", "--model", checkpoint, "--n0", 10, "--n", 300, "--points", 2, "--batch-size", 64,
            "--device", "cpu", "--db", db, "--quiet"]
    code, _, err = _cli(capsys, *argv)
    assert code == 0 and "measured now" in err
    recorded = json.loads(cost.rates_file(db).read_text())["rates"]
    assert [entry["by"] for entry in recorded.values()] == ["certify run 1"]
    rate = cost.sample_rate(checkpoint, "cpu", 64, {}, cache=cost.rates_file(db))
    assert rate.source.startswith("recorded by certify run 1 on")
    code, _, err = _cli(capsys, *argv, "--new")
    assert code == 0 and "recorded by certify run 1 on" in err
