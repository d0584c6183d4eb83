"""The engine's CUDA paths, with the same test bodies run on the CPU wherever they make sense.

Every test here is marked ``cuda`` (``pytest -m cuda``, as benchmarks/gpu_check.sh runs them).
Tests parametrized over devices run their CPU case in the normal suite; their CUDA case, and the
CUDA-only tests, skip with the reason printed where ``torch.cuda.is_available()`` is false.

Exact (``torch.equal``) on each device, for a fixed seed; CUDA's Philox generator draws other
numbers than the CPU's for the same seed, so exactness is within one device:

- the noise stream is the documented per-(point, block) draws for any batch size;
- the noisy inputs the classifier sees are the same for any batch size and memory format;
- the counts are the same for any batch size, memory format, CUDA graphs or eager, for a
  classifier whose label depends on each sample alone by construction (integer arithmetic);
- a real CNN gives the same counts twice, and the same under CUDA graph replay as eagerly at the
  same batch size (the graph replays the kernels the eager pass ran).

Within floating point, where the arithmetic genuinely differs:

- a real CNN across batch sizes and memory formats: cuDNN picks kernels by shape and layout (and
  runs fp32 convolutions in TF32 by default), so logits differ in the last bits; labels must
  agree on every sample whose top two logits are further apart than a tolerance;
- the fast modes (bf16/fp16 autocast) against fp32: the same prediction where fp32 certifies
  with a clear margin, counts that agree within sampling error;
- kNN sigma(x) on CUDA against the CPU: distances within float32 rounding.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency
from torch import Tensor, nn

from smoothviz import noise, speed, votes
from smoothviz.certify import certify_points
from smoothviz.sigma import KNN, Constant
from smoothviz.speed import EngineOptions, auto_batch_size, measure_memory_per_sample, prepare_model

HAS_CUDA = torch.cuda.is_available()
NO_CUDA = "CUDA is not available here (torch.cuda.is_available() is False): this CUDA case runs on a GPU"
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
SHAPE = (3, 8, 8)
CLASSES = 5
SEEDS = [11, 12, 13]
# A batch that splits blocks, one that is a block, one bigger than all samples of some point, one
# bigger than everything.
BATCHES = (100, 1024, 3000, 8192)

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("one_thread")]


def small_cnn(seed: int = 0) -> nn.Module:
    """Two convolutions with batch norm: votes spread over several classes at sigma 0.5."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 64, CLASSES),
    ).eval()


class CellCount(nn.Module):
    """A classifier whose label depends on each sample alone, exactly, on any device and layout.

    label = (sum of floor(4 x) over the sample) mod classes. The floors are small integers whose
    sum float32 holds exactly in any order, so no kernel choice, batch size or memory format can
    change a label. Its logits peak at the label.
    """

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, x: Tensor) -> Tensor:
        label = (x * 4).floor().flatten(1).sum(1).long().remainder(self.classes)
        grid = torch.arange(self.classes, device=x.device)
        return -(grid[None, :] - label[:, None]).abs().float()


class Recorder:
    """Wraps a prepared classifier; keeps every batch it classifies and the labels, in stream order."""

    thread_safe = False  # one thread: the batches arrive in stream order

    def __init__(self, predictor: speed.Predictor) -> None:
        self.predictor = predictor
        self.inputs: list[Tensor] = []
        self.labels: list[Tensor] = []

    def __call__(self, batch: Tensor) -> Tensor:
        labels = self.predictor(batch)
        self.inputs.append(batch.clone())
        self.labels.append(labels.clone())
        return labels

    def all_inputs(self) -> Tensor:
        return torch.cat(self.inputs)

    def all_labels(self) -> Tensor:
        return torch.cat(self.labels)


def points(device: torch.device) -> tuple[Tensor, Tensor]:
    x = torch.rand((len(SEEDS), *SHAPE), generator=torch.Generator().manual_seed(1)).to(device)
    return x, torch.tensor([0.25, 0.5, 1.0], device=device)


def count(classify, x: Tensor, sigma: Tensor, nums, batch: int, new_input=None, threads: int | None = 1) -> Tensor:
    with torch.inference_mode():
        return votes.count_votes(classify, x, sigma, nums, CLASSES, batch,
                                 torch.Generator(device=x.device), SEEDS, new_input=new_input, threads=threads)


def record(model: nn.Module, options: EngineOptions, device: torch.device, batch: int, nums) -> Recorder:
    """Run the engine once through a Recorder around ``prepare_model(model, options)``."""
    x, sigma = points(device)
    predictor = prepare_model(model, options, device, (batch, *SHAPE))
    recorder = Recorder(predictor)
    count(recorder, x, sigma, nums, batch, new_input=predictor.new_input)
    return recorder


NUMS = [3 * noise.NOISE_BLOCK + 77, 500, 2 * noise.NOISE_BLOCK]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 700, noise.NOISE_BLOCK, 5000])
def test_noise_stream_is_the_documented_blocks(device, batch):
    """Block b of point p is randn((rows, *shape)) from a generator seeded with derive_seed(seed_p, b),
    drawn on the device, whatever the batch size."""
    dev = torch.device(device)
    generator = torch.Generator(device=dev)
    want = []
    for p, num in enumerate(NUMS):
        for b, rows in enumerate(noise.block_sizes(num)):
            generator.manual_seed(noise.derive_seed(SEEDS[p], b))
            want.append(torch.randn((rows, *SHAPE), generator=generator, device=dev))
    stream = noise.NoiseStream(NUMS, SHAPE, batch, torch.Generator(device=dev), SEEDS, dev)
    got = torch.cat([rows.clone() for _, rows in stream.batches()])
    assert got.device.type == dev.type
    assert torch.equal(got, torch.cat(want))


@pytest.mark.parametrize("device", DEVICES)
def test_noisy_inputs_are_identical_for_any_batch_size_and_memory_format(device):
    dev = torch.device(device)
    model = small_cnn()
    reference = record(model, EngineOptions(channels_last=False), dev, 512, NUMS).all_inputs()
    assert reference.shape == (sum(NUMS), *SHAPE) and reference.device.type == dev.type
    for batch in BATCHES:
        for channels_last in (False, True):
            rec = record(model, EngineOptions(channels_last=channels_last), dev, batch, NUMS)
            full = [b for b in rec.inputs if b.shape[0] == min(batch, sum(NUMS))]
            if channels_last:
                assert all(b.is_contiguous(memory_format=torch.channels_last) for b in full)
            assert torch.equal(rec.all_inputs(), reference), (batch, channels_last)


def exact_variants(device: torch.device) -> list[EngineOptions]:
    """Every option that evaluates the same classifier, with and without CUDA graphs on CUDA."""
    out = [EngineOptions(channels_last=False), EngineOptions(channels_last=True)]
    if device.type == "cuda":
        out += [EngineOptions(cuda_graphs=True), EngineOptions(cuda_graphs=True, channels_last=True)]
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_counts_are_exact_for_a_batch_invariant_classifier(device):
    dev = torch.device(device)
    x, sigma = points(dev)
    model = CellCount().to(dev)
    reference = count(votes.argmax_classifier(model), x, sigma, NUMS, 512)
    assert reference.sum(1).tolist() == NUMS
    assert (reference > 0).sum() >= 12, "votes spread over the classes: a demanding comparison"
    for options in exact_variants(dev):
        for batch in BATCHES:
            predictor = prepare_model(model, options, dev, (batch, *SHAPE))
            got = count(predictor, x, sigma, NUMS, batch, new_input=predictor.new_input)
            assert torch.equal(got, reference), (options, batch)
    if dev.type == "cpu":  # one sampling thread per core
        assert torch.equal(count(votes.argmax_classifier(model), x, sigma, NUMS, 256, threads=2), reference)


def near_ties(model: nn.Module, inputs: Tensor, relative: float) -> Tensor:
    """Samples whose top two logits (float64) are closer than ``relative`` times their largest |logit|."""
    exact = copy.deepcopy(model).double()
    with torch.inference_mode():
        logits = torch.cat([exact(chunk.double()) for chunk in inputs.split(4096)])
    top = logits.topk(2, dim=1).values
    return (top[:, 0] - top[:, 1]) <= relative * logits.abs().amax(dim=1)


# This CNN's fp32 logits are within 6 float32 epsilons (relative to the largest |logit|) of float64;
# TF32 rounds to 10 mantissa bits (epsilon 2^-11), hence about 3e-3: the tolerance is 10x that.
TIE_TOLERANCE = 3e-2


@pytest.mark.parametrize("device", DEVICES)
def test_cnn_labels_agree_across_batch_sizes_and_formats_except_near_ties(device, record_property):
    """Same inputs everywhere (exact); labels equal on every sample that is not a near-tie."""
    dev = torch.device(device)
    model = small_cnn()
    base = record(model, EngineOptions(channels_last=False), dev, 512, NUMS)
    again = record(model, EngineOptions(channels_last=False), dev, 512, NUMS)
    assert torch.equal(again.all_labels(), base.all_labels()), "the same configuration twice is deterministic"
    labels, inputs = base.all_labels(), base.all_inputs()
    assert len(set(labels.tolist())) >= 3, "labels spread over classes"
    ties = near_ties(model, inputs, TIE_TOLERANCE)
    flips = 0
    for batch in BATCHES:
        for channels_last in (False, True):
            rec = record(model, EngineOptions(channels_last=channels_last), dev, batch, NUMS)
            assert torch.equal(rec.all_inputs(), inputs)
            differ = rec.all_labels() != labels
            assert not bool((differ & ~ties).any()), f"a clear-margin sample changed label ({batch}, {channels_last})"
            flips += int(differ.sum())
    record_property(f"near_tie_label_flips_{dev.type}", flips)
    record_property(f"near_ties_{dev.type}", int(ties.sum()))
    assert int(ties.sum()) <= 0.1 * len(labels), "few near-ties: the tolerance leaves the comparison demanding"


@needs_cuda
@pytest.mark.parametrize("options", [EngineOptions(), EngineOptions(channels_last=True),
                                     EngineOptions(autocast="fp16"), EngineOptions(autocast="bf16")],
                         ids=["fp32", "channels_last", "fp16", "bf16"])
def test_cuda_graphs_replay_gives_the_eager_counts_exactly(options):
    """At the same batch size, graph replay runs the kernels the eager pass ran: identical labels.

    Every batch is full (3 x 2048 samples in batches of 1024), so no padded batch runs at another shape.
    """
    dev = torch.device("cuda")
    model = small_cnn().to(dev)
    nums = [2048] * 3
    eager = record(model, options, dev, 1024, nums)
    graphed = record(model, EngineOptions(**{**options.to_dict(), "cuda_graphs": True}), dev, 1024, nums)
    assert graphed.predictor.applied["cuda_graphs"] is True and graphed.predictor.static_input is not None
    assert torch.equal(graphed.all_inputs(), eager.all_inputs())
    assert torch.equal(graphed.all_labels(), eager.all_labels())
    # a full batch is written straight into the graph's input buffer
    assert graphed.predictor.new_input(1024).data_ptr() == graphed.predictor.static_input.data_ptr()


@needs_cuda
def test_the_sampling_loop_never_waits_for_the_gpu():
    """No host synchronisation in the hot loop (noise, forward, counting), eager or graphed:
    torch's sync debug mode turns any sync into an error."""
    dev = torch.device("cuda")
    model = small_cnn().to(dev)
    x, sigma = points(dev)
    for options in (EngineOptions(), EngineOptions(channels_last=True), EngineOptions(cuda_graphs=True)):
        predictor = prepare_model(model, options, dev, (1000, *SHAPE))
        count(predictor, x, sigma, NUMS, 1000, new_input=predictor.new_input)  # warm-up: one-off costs
        torch.cuda.synchronize()
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            got = count(predictor, x, sigma, NUMS, 1000, new_input=predictor.new_input)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        assert got.sum(1).tolist() == NUMS


@pytest.mark.parametrize("device,mode", [("cpu", "bf16"), pytest.param("cuda", "bf16", marks=needs_cuda),
                                         pytest.param("cuda", "fp16", marks=needs_cuda)])
def test_fast_modes_agree_on_clear_margin_points(device, mode):
    """Autocast changes the classifier slightly: where fp32 certifies with a clear margin the
    prediction must agree, and the vote distributions agree within sampling error."""
    dev = torch.device(device)
    model = small_cnn(seed=3).to(dev)
    x = torch.rand((12, *SHAPE), generator=torch.Generator().manual_seed(5))
    common = {"labels": [0] * 12, "idx": list(range(12)), "sigma_fn": Constant(0.25), "n0": 100, "n": 2000,
              "alpha": 0.001, "num_classes": CLASSES, "batch_size": 1024, "device": dev, "seed": 7, "r": 0.0,
              "dim": x[0].numel()}
    exact = certify_points(prepare_model(model, EngineOptions(), dev, (1024, *SHAPE)), x, **common)
    fast = certify_points(prepare_model(model, EngineOptions(autocast=mode), dev, (1024, *SHAPE)), x, **common)
    clear = [i for i, res in enumerate(exact) if res.p_a_lower > 0.75]
    assert len(clear) >= 4, "the fixture should give several clear-margin points"
    for i in clear:
        assert fast[i].predict == exact[i].predict
    for a, b in zip(exact, fast):
        table = np.array([a.counts, b.counts])
        table = table[:, table.sum(axis=0) > 0]
        if table.shape[1] > 1:
            assert chi2_contingency(table).pvalue > 1e-4


def wide_cnn() -> nn.Module:
    """Activations of a few hundred kB per 3 x 32 x 32 sample: memory, not the cap, limits the batch."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, CLASSES)).eval()


@needs_cuda
def test_auto_batch_size_stays_within_measured_free_memory():
    """The engine at the automatic batch size allocates at most the share of free memory it was sized for."""
    dev = torch.device("cuda")
    shape = (3, 32, 32)
    model = wide_cnn().to(dev)
    probe = measure_memory_per_sample(model, shape, dev)
    free = speed.available_memory(dev)
    fraction = min(1.0, 4096 * probe.bytes_per_sample / free)  # about 4096 samples' worth
    batch = auto_batch_size(model, shape, dev, memory_fraction=fraction, probe=probe)
    assert 8 <= batch < speed.MAX_AUTO_CUDA_BATCH_SIZE and batch * probe.bytes_per_sample <= fraction * free
    predictor = prepare_model(model, EngineOptions(), dev, (batch, *shape))
    x = torch.rand((1, *shape), device=dev)
    sigma = torch.full((1,), 0.5, device=dev)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    with torch.inference_mode():  # one full batch: its noise, the noisy batch, the forward pass, the votes
        got = votes.count_votes(predictor, x, sigma, [batch], CLASSES, batch, torch.Generator(device=dev), [1],
                                new_input=predictor.new_input)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(dev) - before
    assert got.sum(1).tolist() == [batch]
    assert 0 < peak <= fraction * free


@needs_cuda
def test_available_memory_counts_what_the_allocator_holds_free():
    dev = torch.device("cuda")
    block = torch.empty(1 << 28, dtype=torch.uint8, device=dev)  # 256 MiB, then returned to the cache
    del block
    cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    free, _ = torch.cuda.mem_get_info(dev)
    assert cached >= 1 << 28
    assert speed.available_memory(dev) >= free + cached - (64 << 20)  # other work may allocate meanwhile


@needs_cuda
def test_default_cuda_batch_fits_the_measured_memory():
    dev = torch.device("cuda")
    shape = (3, 32, 32)
    model = wide_cnn().to(dev)
    probe = measure_memory_per_sample(model, shape, dev)
    batch = speed.default_batch_size(dev, model, shape, probe=probe)
    assert batch & (batch - 1) == 0 and 1 <= batch <= speed.MAX_CUDA_BATCH_SIZE
    assert batch * probe.bytes_per_sample <= speed.CUDA_BATCH_BYTES
    assert batch * probe.bytes_per_sample <= speed.CUDA_BATCH_FRACTION * speed.available_memory(dev)


def _brute_mean_knn(x: Tensor, train: Tensor, k: int) -> np.ndarray:
    """Mean distance to the k nearest training rows: float64 differences (no matrix-product formula), full sort."""
    d = torch.cdist(x.double(), train.double(), compute_mode="donot_use_mm_for_euclid_dist")
    return d.sort(dim=1).values[:, :k].mean(dim=1).numpy()


@pytest.fixture(scope="module")
def knn_data():
    """CIFAR-10's dimension; the distances are large (about 22), as they are for images."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand((1500, 3072), generator=generator), torch.rand((60, 3072), generator=generator)


@pytest.mark.parametrize("device", DEVICES)
def test_knn_distances_match_a_float64_reference(device, knn_data):
    train, test = knn_data
    want = _brute_mean_knn(test, train, 20)
    for chunk in (None, 5000):  # the default blocks, and blocks of a few training points
        sigma_fn = KNN(train, 0.25, 0.01, k=20, m=0.0, chunk_size=chunk, device=device)
        got = sigma_fn.mean_distance(test.to(device))
        assert got.device.type == torch.device(device).type
        np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-5)


@needs_cuda
def test_knn_sigma_on_cuda_equals_the_cpu(knn_data):
    """Distances, the training mean m (each point excluding itself) and sigma(x): float32 rounding apart."""
    train, test = knn_data
    cpu = KNN(train, 0.25, 0.05, k=20, device="cpu")
    gpu = KNN(train.cuda(), 0.25, 0.05, k=20, device="cuda")
    np.testing.assert_allclose(gpu.training_mean_distance().cpu().numpy(), cpu.training_mean_distance().numpy(),
                               rtol=1e-5)
    assert gpu.m == pytest.approx(cpu.m, rel=1e-6)
    np.testing.assert_allclose(gpu(test.cuda()).cpu().numpy(), cpu(test).numpy(), rtol=1e-5)
    np.testing.assert_allclose(gpu.mean_distance(test.cuda()).cpu().numpy(), cpu.mean_distance(test).numpy(),
                               rtol=1e-5)
