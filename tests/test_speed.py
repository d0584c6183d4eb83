"""Engine speed options: exact counts where the draws are unchanged, fast mode, automatic batch size."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency
from torch import nn

from smoothviz import speed
from smoothviz.certify import certify_points, sample_counts
from smoothviz.errors import InvalidArgument
from smoothviz.sigma import Constant
from smoothviz.speed import EngineOptions, Predictor, auto_batch_size, measure_memory_per_sample, prepare_model

SHAPE = (1, 8, 8)
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cnn(seed: int = 0, classes: int = 5, channels: int = 1) -> nn.Module:
    """A small CNN whose votes spread over several classes at sigma 0.5 (a demanding comparison)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 64, classes),
    ).eval()


@pytest.fixture(scope="module")
def setup():
    x = torch.rand((4, *SHAPE), generator=torch.Generator().manual_seed(1))
    sigma = torch.full((4,), 0.5)
    return tiny_cnn(), x, sigma


def counts(classify, x, sigma, batch=512, num=2000):
    return sample_counts(classify, x, sigma, num, 5, batch, torch.Generator(), seeds=[11, 12, 13, 14])


def test_default_predictor_reproduces_plain_engine(setup):
    model, x, sigma = setup
    plain = counts(model, x, sigma)
    assert (plain > 0).sum() >= 12, "votes should spread over classes for a demanding comparison"
    prepared = prepare_model(model, EngineOptions(), CPU, (512, *SHAPE))
    assert torch.equal(counts(prepared, x, sigma), plain)


def test_channels_last_keeps_draws_and_counts(setup):
    _, _, sigma = setup
    shape = (3, 8, 8)
    model = tiny_cnn(channels=3)
    x = torch.rand((4, *shape), generator=torch.Generator().manual_seed(2))
    plain = counts(model, x, sigma)
    assert (plain > 0).sum() >= 12
    for option in (True, None):  # explicit, and the CPU default
        prepared = prepare_model(model, EngineOptions(channels_last=option), CPU, (512, *shape))
        assert prepared.applied["channels_last"] is True
        buf = prepared.new_input(7)
        assert buf.is_contiguous(memory_format=torch.channels_last) and not buf.is_contiguous()
        assert torch.equal(counts(prepared, x, sigma), plain)
    contiguous = prepare_model(model, EngineOptions(channels_last=False), CPU, (512, *shape))
    assert contiguous.applied["channels_last"] is False and contiguous.new_input(7).is_contiguous()
    assert torch.equal(counts(contiguous, x, sigma), plain)
    # the caller's model keeps its memory format (the predictor works on a copy)
    assert next(model.parameters()).is_contiguous()


def test_batch_size_and_chunking_keep_counts(setup):
    model, x, sigma = setup
    plain = counts(model, x, sigma)
    for batch in (100, 999, 4096):
        prepared = prepare_model(model, EngineOptions(batch_size=batch), CPU, (batch, *SHAPE))
        assert torch.equal(counts(prepared, x, sigma, batch=batch), plain)


def test_channels_last_is_a_no_op_for_flat_inputs():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    prepared = prepare_model(mlp, EngineOptions(channels_last=True), CPU, (64, 2))
    assert prepared.applied["channels_last"] is False
    assert "contiguous" in prepared.applied["channels_last_note"]
    x = torch.randn(10, 2)
    assert torch.equal(prepared(x), mlp(x).argmax(1))


def test_static_shape_pads_partial_batches(setup):
    """The padding used for compiled or graph-captured forward passes returns the same labels."""
    model, x, sigma = setup
    seen = []

    def forward(batch):
        seen.append(batch.shape[0])
        return model(batch).argmax(1)

    static = Predictor(forward, 64, SHAPE, CPU, EngineOptions(), torch.contiguous_format, static_shape=True)
    batch = torch.rand(50, *SHAPE)
    assert torch.equal(static(batch), model(batch).argmax(1))
    big = torch.rand(130, *SHAPE)
    assert torch.equal(static(big), model(big).argmax(1))
    assert set(seen) == {64}


def test_compile_plumbing_keeps_counts(setup, monkeypatch):
    """torch.compile with the eager backend: same counts, static shapes, recorded as applied.

    Inductor itself (C++ code generation) takes about a minute on this 2-core machine even for a
    tiny model, so the test uses dynamo with the eager backend: it exercises graph capture, the
    static-shape padding and the options plumbing. The bench measures the inductor path.
    """
    model, x, sigma = setup
    plain = counts(model, x, sigma)
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend="eager", dynamic=False))
    prepared = prepare_model(model, EngineOptions(compile=True), CPU, (512, *SHAPE))
    assert prepared.applied["compile"] is True and prepared.static_shape
    assert torch.equal(counts(prepared, x, sigma), plain)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None,
    reason="torch.compile's inductor backend needs a C++ compiler (set CXX or install g++)",
)
def test_inductor_compile_keeps_counts(setup):
    """The real torch.compile (inductor, freezing): same counts as eager for the same draws."""
    model, x, sigma = setup
    prepared = prepare_model(model, EngineOptions(compile=True), CPU, (512, *SHAPE))
    assert prepared.applied["compile"] is True
    assert torch.equal(counts(prepared, x, sigma), counts(model, x, sigma))


def test_compile_failure_falls_back_with_warning(setup, monkeypatch):
    model, x, sigma = setup

    def broken(fn, **kw):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        prepared = prepare_model(model, EngineOptions(compile=True), CPU, (512, *SHAPE))
    assert prepared.applied["compile"].startswith("failed")
    assert torch.equal(counts(prepared, x, sigma), counts(model, x, sigma))


def test_cuda_graphs_need_cuda(setup):
    model, _, _ = setup
    with pytest.raises(InvalidArgument, match="cuda_graphs needs a CUDA device"):
        prepare_model(model, EngineOptions(cuda_graphs=True), CPU, (64, *SHAPE))


def test_options_validate():
    with pytest.raises(InvalidArgument, match="autocast"):
        EngineOptions(autocast="int8")
    with pytest.raises(InvalidArgument, match="batch_size"):
        EngineOptions(batch_size=0)
    with pytest.raises(InvalidArgument, match="channels_last"):
        EngineOptions(channels_last="yes")
    opts = EngineOptions(autocast="bf16", channels_last=True, batch_size="auto")
    assert EngineOptions(**opts.to_dict()) == opts


def test_resolve_batch_size(monkeypatch):
    model = tiny_cnn()
    assert speed.resolve_batch_size(EngineOptions(batch_size=77), model, SHAPE, CPU) == 77
    assert speed.resolve_batch_size(EngineOptions(), model, SHAPE, CPU) == speed.cpu_batch_size(model, SHAPE)
    monkeypatch.setattr(speed, "available_memory", lambda device: 2**20)
    auto = speed.resolve_batch_size(EngineOptions(batch_size="auto"), model, SHAPE, CPU)
    assert auto == auto_batch_size(model, SHAPE, CPU) and auto < 256


def test_cpu_batch_size_follows_measured_activations():
    """A power of two whose measured activations fill about CPU_BATCH_BYTES, within the bounds."""
    cases = {
        "mlp": nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)),
        "cnn": nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 64, 10)),
        "wide": nn.Sequential(nn.Conv2d(1, 512, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512 * 64, 10)),
    }
    sizes = {}
    for name, model in cases.items():
        probe = measure_memory_per_sample(model.eval(), (1, 8, 8), CPU)
        size = sizes[name] = speed.cpu_batch_size(model, (1, 8, 8), probe=probe)
        assert size & (size - 1) == 0, "a power of two"
        assert speed.MIN_CPU_BATCH_SIZE <= size <= speed.MAX_CPU_BATCH_SIZE
        if speed.MIN_CPU_BATCH_SIZE < size < speed.MAX_CPU_BATCH_SIZE:
            assert size * probe.bytes_per_sample <= speed.CPU_BATCH_BYTES < 2 * size * probe.bytes_per_sample
    assert sizes["mlp"] == speed.MAX_CPU_BATCH_SIZE and sizes["wide"] == speed.MIN_CPU_BATCH_SIZE
    assert sizes["mlp"] > sizes["cnn"] >= sizes["wide"]
    assert speed.default_batch_size(CPU) == speed.MIN_CPU_BATCH_SIZE
    assert speed.default_batch_size(CPU, cases["mlp"], (1, 8, 8)) == sizes["mlp"]
    assert speed.default_batch_size(torch.device("cuda")) == speed.MAX_CUDA_BATCH_SIZE  # nothing to measure


def test_cuda_default_batch_follows_measured_memory(monkeypatch):
    """The CUDA default: the largest power of two up to 8192 whose measured memory fits both
    CUDA_BATCH_BYTES and a quarter of the free memory (the CUDA branch, fed measured numbers)."""
    gib, mib, kib = 2**30, 2**20, 2**10
    assert speed.cuda_batch_size(300 * kib, 139 * gib) == 8192  # a CIFAR ResNet on an H200
    assert speed.cuda_batch_size(20 * mib, 139 * gib) == 512  # ImageNet: 16 GiB / 20 MiB = 819
    assert speed.cuda_batch_size(1 * mib, 8 * gib) == 2048  # a quarter of 8 GiB free
    assert speed.cuda_batch_size(64 * gib, 16 * gib) == 1  # not even one fits: cost.check_memory refuses it
    for per_sample in (1, 1000, 300 * kib, 20 * mib):
        for free in (2 * gib, 40 * gib, 139 * gib):
            batch = speed.cuda_batch_size(per_sample, free)
            assert batch & (batch - 1) == 0 and batch <= speed.MAX_CUDA_BATCH_SIZE
            budget = min(speed.CUDA_BATCH_BYTES, speed.CUDA_BATCH_FRACTION * free)
            assert batch * per_sample <= budget
            assert batch == speed.MAX_CUDA_BATCH_SIZE or 2 * batch * per_sample > budget
    probe = speed.MemoryProbe(20 * mib, 32, "given")
    monkeypatch.setattr(speed, "available_memory", lambda device: 139 * gib)
    assert speed.default_batch_size(torch.device("cuda"), tiny_cnn(), SHAPE, probe=probe) == 512


def test_available_memory_on_cuda_counts_the_allocator_cache(monkeypatch):
    """Free for new tensors on CUDA: the driver's free memory plus what torch's allocator caches unused."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 5000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 700)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 200)
    assert speed.available_memory(torch.device("cuda")) == 1500
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    assert speed.available_memory(torch.device("cuda:0")) == 1000


def test_cpu_probe_measures_the_same_per_sample_memory_at_any_probe_batch():
    """Module outputs grow with the batch, so the cheap default probe gives the 32-sample figure."""
    model = tiny_cnn()
    small = measure_memory_per_sample(model, SHAPE, CPU)
    assert small.probe_batch == speed.CPU_PROBE_BATCH
    assert small.bytes_per_sample == measure_memory_per_sample(model, SHAPE, CPU, probe_batch=32).bytes_per_sample


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_fast_mode_agrees_on_clear_margin_points(mode):
    """Autocast changes the classifier slightly; where fp32 certifies with a clear margin the
    predictions must agree, and the vote distributions must agree within sampling error."""
    model = tiny_cnn(seed=3)
    x = torch.rand((12, *SHAPE), generator=torch.Generator().manual_seed(5))
    sigma_fn = Constant(0.25)
    common = dict(labels=[0] * 12, idx=list(range(12)), sigma_fn=sigma_fn, n0=100, n=2000, alpha=0.001,
                  num_classes=5, batch_size=1024, device=CPU, seed=7, r=0.0, dim=64)
    exact = certify_points(model, x, **common)
    fast = certify_points(prepare_model(model, EngineOptions(autocast=mode), CPU, (1024, *SHAPE)), x, **common)
    clear = [i for i, res in enumerate(exact) if res.p_a_lower > 0.75]
    assert len(clear) >= 4, "the fixture should give several clear-margin points"
    for i in clear:
        assert fast[i].predict == exact[i].predict
    for a, b in zip(exact, fast):
        table = np.array([a.counts, b.counts])
        table = table[:, table.sum(axis=0) > 0]
        if table.shape[1] > 1:
            assert chi2_contingency(table).pvalue > 1e-4


def test_memory_probe_bounds_the_activations():
    """The CPU probe charges at least every activation of a sample (here known exactly)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 1000), nn.ReLU(), nn.Linear(1000, 10)).eval()
    probe = measure_memory_per_sample(model, SHAPE, CPU)
    exact_activations = 4 * (64 + 1000 + 1000 + 10)
    assert probe.bytes_per_sample >= exact_activations + 2 * 4 * 64


@pytest.mark.parametrize("free_mib", [1, 7, 64, 300])
def test_auto_batch_size_never_exceeds_measured_memory(free_mib, monkeypatch):
    model = tiny_cnn()
    monkeypatch.setattr(speed, "available_memory", lambda device: free_mib * 2**20)
    probe = measure_memory_per_sample(model, SHAPE, CPU)
    for fraction in (0.25, 0.5, 1.0):
        batch = auto_batch_size(model, SHAPE, CPU, memory_fraction=fraction, probe=probe, max_batch=1 << 30)
        budget = fraction * free_mib * 2**20
        assert 1 <= batch and batch * probe.bytes_per_sample <= budget
        # and it is the largest such multiple of 8
        assert (batch + 8) * probe.bytes_per_sample > budget


def test_auto_batch_size_errors_without_memory_and_caps(monkeypatch):
    model = tiny_cnn()
    monkeypatch.setattr(speed, "available_memory", lambda device: 1000)
    with pytest.raises(InvalidArgument, match="not enough free memory"):
        auto_batch_size(model, SHAPE, CPU)
    monkeypatch.setattr(speed, "available_memory", lambda device: 2**40)
    assert auto_batch_size(model, SHAPE, CPU) == speed.cpu_batch_size(model, SHAPE)


def _peak_rss_growth(fn) -> int | None:
    """Peak resident memory growth (bytes) while ``fn`` runs; None where Linux's counters are absent."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak resident set size (VmHWM)
    except OSError:
        return None

    def read(key: str) -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    before = read("VmRSS:")
    fn()
    return read("VmHWM:") - before


def test_auto_batch_size_run_stays_within_measured_memory(monkeypatch):
    """A real forward pass at the automatic batch size grows the resident memory by less than the
    budget the batch size was chosen for."""
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 64, 10)).eval()
    free = 64 * 2**20
    monkeypatch.setattr(speed, "available_memory", lambda device: free)
    batch = auto_batch_size(model, SHAPE, CPU, memory_fraction=0.5, max_batch=1 << 30)
    x = torch.rand(batch, *SHAPE)

    def run():
        with torch.inference_mode():
            model(x + 0.5 * torch.randn_like(x)).argmax(1)

    growth = _peak_rss_growth(run)
    if growth is None:
        pytest.skip("no /proc/self/clear_refs on this system: peak memory cannot be reset")
    assert batch > 100
    assert growth <= 0.5 * free


def test_certify_cli_records_the_fast_mode(tmp_path):
    """``certify --fast`` runs under bf16 autocast and records it with the run."""
    from smoothviz.cli import main
    from smoothviz.data import load_dataset
    from smoothviz.models import build_model, save_checkpoint
    from smoothviz.store import Store

    ds = load_dataset("digits")
    torch.manual_seed(0)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_model("cnn-small", ds.input_shape, ds.num_classes),
                    {"dataset": "digits", "arch": "cnn-small", "input_shape": list(ds.input_shape),
                     "num_classes": ds.num_classes, "sigma": "constant:0.25"})
    db = tmp_path / "runs.db"
    common = ["certify", "--model", str(ckpt), "--points", "2", "--n0", "10", "--n", "100", "--db", str(db), "--quiet"]
    assert main([*common, "--fast"]) == 0
    assert main([*common, "--autocast", "bf16"]) == 0  # the same run: resumed, not a new one
    runs = Store(db).runs()
    assert len(runs) == 1
    assert Store(db).run(int(runs["id"].iloc[0]))["options"] == {"autocast": "bf16"}


def test_fit_measured_batch_shrinks_until_the_measured_batch_fits():
    """A workspace that appears only above 600 samples: the probe's per-sample figure misses it."""
    calls = []

    def peak(batch: int) -> int:
        calls.append(batch)
        return 100 * batch + (50_000 if batch > 600 else 0)

    assert speed.fit_measured_batch(800, 200_000, peak) == 800 and calls == [800]  # fits at once: kept
    calls.clear()
    got = speed.fit_measured_batch(1000, 100_000, peak)
    assert peak(got) <= 100_000 and got % 8 == 0 and 400 < got < 600
    assert calls[:-1] == sorted(calls[:-1], reverse=True) and len(calls) <= 5
    out_of_memory = speed.fit_measured_batch(64, 10**9, lambda b: None if b > 16 else b)
    assert out_of_memory == 16
    with pytest.raises(InvalidArgument, match="no batch size measured within"):
        speed.fit_measured_batch(64, 10, lambda b: 1000 * b)
