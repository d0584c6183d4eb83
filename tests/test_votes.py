"""Vote counting on CPU threads: the same counts as one thread, progress in the caller, clean stops."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from smoothviz import noise, votes
from smoothviz.errors import Cancelled, CheckpointError, InvalidArgument
from smoothviz.speed import EngineOptions, prepare_model

SHAPE = (1, 6, 6)


def small_cnn() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5)).eval()


@pytest.fixture
def points():
    torch.manual_seed(4)
    return torch.rand(3, *SHAPE), torch.tensor([0.2, 0.5, 1.0])


@pytest.fixture
def torch_threads():
    """Restore torch's thread count after a test that changes it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def count(classify, x, sigma, nums, batch, threads, on_batch=None, seeds=(11, 12, 13)):
    with torch.inference_mode():
        return votes.count_votes(classify, x, sigma, nums, 5, batch, torch.Generator(), list(seeds),
                                 on_batch=on_batch, threads=threads)


@pytest.mark.parametrize("batch,workers", [(700, 2), (256, 2), (10**5, 3), (1, 4)])
def test_work_units_cover_every_block_once(batch, workers):
    nums = [0, 100, 5 * noise.NOISE_BLOCK + 7, 3 * noise.NOISE_BLOCK] + [300] * 50
    units = votes.work_units(nums, batch, workers)
    segments = [seg for unit in units for seg in unit]
    for p, num in enumerate(nums):
        mine = [(first, rows) for q, first, rows in segments if q == p]
        assert sum(rows for _, rows in mine) == num
        # consecutive runs of whole blocks, in order
        expect_first = 0
        for first, rows in mine:
            assert first == expect_first
            expect_first += rows // noise.NOISE_BLOCK
    assert all(len({p for p, _, _ in unit}) == len(unit) for unit in units), "a point appears once per unit"
    if batch == 10**5:
        assert len(units) >= 4 * workers - 1, "enough units to keep every thread busy"
        small = [unit for unit in units[:-1] if all(rows == 300 for _, _, rows in unit)]
        assert small and all(len(unit) > 1 for unit in small), "points with few samples share a unit"


@pytest.mark.parametrize("batch,workers", [(256, 2), (10**5, 3)])
def test_work_units_number_blocks_from_first_blocks(batch, workers):
    nums = [3 * noise.NOISE_BLOCK + 5, 40, 2 * noise.NOISE_BLOCK]
    starts = [7, 2, 0]
    segments = [seg for unit in votes.work_units(nums, batch, workers, starts) for seg in unit]
    for p, num in enumerate(nums):
        mine = [(first, rows) for q, first, rows in segments if q == p]
        assert mine[0][0] == starts[p] and sum(rows for _, rows in mine) == num
        shifted = [(first - starts[p], rows) for first, rows in mine]
        plain = [(first, rows) for q, first, rows in
                 (seg for unit in votes.work_units(nums, batch, workers) for seg in unit) if q == p]
        assert shifted == plain


@pytest.mark.parametrize("threads", [1, 2])
def test_first_blocks_continue_a_points_stream(points, threads, torch_threads):
    """Drawing blocks 0-1 and then 2-4 of a point (first_blocks = 2) votes exactly as drawing blocks
    0-4 at once: a later draw continues the point's stream with fresh, seeded blocks."""
    torch.set_num_threads(1)
    classify = votes.argmax_classifier(small_cnn())
    x, sigma = points
    block = noise.NOISE_BLOCK
    whole = count(classify, x, sigma, [5 * block, 3 * block, block], 128, threads=threads)
    head = count(classify, x, sigma, [2 * block, block, block], 128, threads=threads)
    with torch.inference_mode():
        tail = votes.count_votes(classify, x, sigma, [3 * block, 2 * block, 0], 5, 128, torch.Generator(),
                                 [11, 12, 13], threads=threads, first_blocks=[2, 1, 1])
    assert torch.equal(head + tail, whole)
    with torch.inference_mode():
        moved = votes.count_votes(classify, x, sigma, [2 * block, block, block], 5, 128, torch.Generator(),
                                  [11, 12, 13], threads=threads, first_blocks=[0, 0, 1])
    assert torch.equal(moved[:2], head[:2]) and not torch.equal(moved[2], head[2]), "other blocks, other noise"
    with pytest.raises(InvalidArgument, match="first_blocks"):
        votes.count_votes(classify, x, sigma, [1, 1, 1], 5, 128, torch.Generator(), [1, 2, 3], first_blocks=[0, 1])


@pytest.mark.parametrize("batch", [64, 256, 5000])
def test_threads_give_the_same_counts_as_one_thread(points, batch, torch_threads):
    torch.set_num_threads(1)
    classify = votes.argmax_classifier(small_cnn())
    x, sigma = points
    nums = [3 * noise.NOISE_BLOCK + 77, 500, 2 * noise.NOISE_BLOCK]
    serial = count(classify, x, sigma, nums, batch, threads=1)
    for threads in (2, 3):
        assert torch.equal(count(classify, x, sigma, nums, batch, threads=threads), serial)
    assert serial.sum(1).tolist() == nums
    assert torch.get_num_threads() == 1, "torch's thread count is restored"


def test_prepared_predictor_is_sampled_on_threads(points, torch_threads):
    torch.set_num_threads(2)
    predictor = prepare_model(small_cnn(), EngineOptions(channels_last=True), torch.device("cpu"), (128, *SHAPE))
    assert predictor.thread_safe
    assert votes.sampling_threads(predictor, torch.device("cpu"), seeded=True) == 2
    x, sigma = points
    threaded = count(predictor, x, sigma, [4000] * 3, 128, threads=None)
    torch.set_num_threads(1)
    assert torch.equal(count(predictor, x, sigma, [4000] * 3, 128, threads=1), threaded)
    assert torch.get_num_threads() == 1


def test_sampling_threads_rules():
    cpu = torch.device("cpu")
    safe = votes.argmax_classifier(small_cnn())
    assert votes.sampling_threads(safe, cpu, seeded=True, threads=4) == 4
    assert votes.sampling_threads(safe, cpu, seeded=False, threads=4) == 1, "unseeded noise is drawn in sequence"
    assert votes.sampling_threads(lambda b: b.sum((1, 2, 3)).long(), cpu, seeded=True, threads=4) == 1
    assert votes.sampling_threads(safe, torch.device("cuda"), seeded=True, threads=4) == 1


def test_progress_runs_in_the_calling_thread_and_adds_up(points):
    classify = votes.argmax_classifier(small_cnn())
    x, sigma = points
    seen: list[tuple[int, int]] = []
    count(classify, x, sigma, [3000, 2000, 1000], 256, threads=2,
          on_batch=lambda rows: seen.append((threading.get_ident(), rows)))
    assert {t for t, _ in seen} == {threading.get_ident()}
    assert sum(rows for _, rows in seen) == 6000 and max(rows for _, rows in seen) <= 256


def test_cancel_stops_every_thread(points):
    model = small_cnn()
    lock = threading.Lock()
    forwards = [0]
    cancelled = threading.Event()

    def classify(batch: torch.Tensor) -> torch.Tensor:
        with lock:
            forwards[0] += 1
            ahead = forwards[0] > 6
        if ahead:  # threads may not run ahead of the caller's cancel by more than their units
            cancelled.wait(10)
        return model(batch).argmax(1)

    classify.thread_safe = True
    x, sigma = points
    calls = []

    def on_batch(rows: int) -> None:
        calls.append(rows)
        if len(calls) == 3:
            cancelled.set()
            raise Cancelled("cancelled")

    with pytest.raises(Cancelled):
        count(classify, x, sigma, [20 * noise.NOISE_BLOCK] * 3, 256, threads=2, on_batch=on_batch)
    stopped_at = forwards[0]
    # each thread ends the unit it holds (4 batches of 256 per 1024-row block), none starts another
    assert stopped_at <= 6 + 2 * 4 < 240
    threading.Event().wait(0.2)
    assert forwards[0] == stopped_at, "no forward pass runs after count_votes has raised"


def test_a_failing_classifier_error_reaches_the_caller(points):
    x, sigma = points

    def bad(batch: torch.Tensor) -> torch.Tensor:
        return torch.zeros(batch.shape[0] + 1, dtype=torch.int64)

    bad.thread_safe = True
    with pytest.raises(CheckpointError, match="labels of shape"):
        count(bad, x, sigma, [5000] * 3, 256, threads=2)
