"""SAMPLEUNDERNOISE of Cohen et al. (2019): noisy batches through the base classifier, votes counted.

Noisy samples x[p] + sigma[p] * eps fill batches (several points may share one); the classifier's
labels are counted on the device with ``scatter_add_`` (no host sync per batch). On a CPU the
work is also split across threads: each thread takes runs of whole noise blocks, draws their noise
and classifies them with one torch thread of its own. torch.randn on a CPU runs on one thread, so
with a single multi-threaded forward pass the noise is a serial share of every batch; with one
thread per core, noise and forward passes both use every core. Blocks are seeded on their own
(smoothviz.noise), so the counts do not depend on how the work is split.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor, nn

from smoothviz.errors import CheckpointError, InvalidArgument
from smoothviz.noise import NOISE_BLOCK, NoiseStream, block_sizes

Classifier = Callable[[Tensor], Tensor]


def argmax_classifier(model: nn.Module) -> Classifier:
    """The base classifier f: a noisy batch -> int64 labels (argmax of the logits) on the device."""

    def classify(batch: Tensor) -> Tensor:
        return model(batch).argmax(1)

    classify.thread_safe = True  # type: ignore[attr-defined]  # an eager forward keeps no state
    return classify


def check_sigma(sigma: Tensor, points: int) -> None:
    """sigma must hold one value per point."""
    if sigma.shape != (points,):
        raise InvalidArgument(f"sigma has shape {tuple(sigma.shape)}, expected ({points},)")


def sampling_threads(classify: Classifier, device: torch.device, seeded: bool, threads: int | None = None) -> int:
    """Threads that sample at once: ``threads`` (default torch's thread count) on a CPU, else 1.

    One thread where the noise must be drawn in sequence (no seeds), on other devices, and for
    classifiers not marked ``thread_safe`` (compiled code, CUDA graphs, foreign callables).
    """
    if device.type != "cpu" or not seeded or not getattr(classify, "thread_safe", False):
        return 1
    return max(1, int(threads if threads is not None else torch.get_num_threads()))


def count_votes(
    classify: Classifier,
    x: Tensor,
    sigma: Tensor,
    nums: Sequence[int],
    num_classes: int,
    batch_size: int,
    generator: torch.Generator,
    seeds: Sequence[int] | None = None,
    on_batch: Callable[[int], None] | None = None,
    new_input: Callable[[int], Tensor] | None = None,
    threads: int | None = None,
    first_blocks: Sequence[int] | None = None,
) -> Tensor:
    """SAMPLEUNDERNOISE for several points at once: int64 votes [P, num_classes] on x's device.

    Point p gets ``nums[p]`` samples x[p] + sigma[p] * eps. Noise order (smoothviz.noise): for p
    in order, for each block of ``block_sizes(nums[p])``: ``torch.randn((rows, *shape),
    generator=generator)``, the generator first reseeded with ``derive_seed(seeds[p], block)`` when
    ``seeds`` is given (else drawn in sequence). ``first_blocks[p]`` (default 0) numbers point p's
    first block, so a later draw of a point continues its stream of blocks (a sequential rule's
    next draw: ``smoothviz.sequential.draw_plan``) with noise independent of the earlier draws.
    Consecutive rows of that stream fill batches of ``batch_size``; each batch is classified in
    one call of ``classify`` and its votes added on the device (no host sync). ``on_batch(rows)``
    runs after each batch, in the calling thread (progress, cancellation); ``new_input(m)`` gives
    the buffer a batch is written into (e.g. in the model's memory format). ``threads``: see ``sampling_threads``. A label >= num_classes is
    counted in a spill column that is not returned, so the row sums then fall short of ``nums``.
    """
    if batch_size < 1:
        raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
    points = x.shape[0]
    check_sigma(sigma, points)
    if len(nums) != points or (seeds is not None and len(seeds) != points):
        raise InvalidArgument("nums and seeds need one entry per point")
    if first_blocks is not None and (len(first_blocks) != points or min(first_blocks, default=0) < 0):
        raise InvalidArgument("first_blocks needs one block number >= 0 per point")
    workers = sampling_threads(classify, x.device, seeds is not None, threads)
    if workers > 1 and sum(nums) > batch_size:
        return _count_threaded(classify, x, sigma, nums, num_classes, batch_size, seeds, on_batch, new_input,
                               workers, first_blocks)
    return _count(classify, x, sigma, nums, num_classes, batch_size, generator, seeds, on_batch, new_input,
                  first_blocks)


def _count(
    classify: Classifier, x: Tensor, sigma: Tensor, nums: Sequence[int], num_classes: int, batch_size: int,
    generator: torch.Generator, seeds: Sequence[int] | None, on_batch: Callable[[int], None] | None,
    new_input: Callable[[int], Tensor] | None, first_blocks: Sequence[int] | None = None,
) -> Tensor:
    """The votes of ``count_votes`` in the calling thread (``first_blocks``: see NoiseStream)."""
    device, shape = x.device, tuple(x.shape[1:])
    points = x.shape[0]
    width = num_classes + 1  # one spill column per point for labels outside the classes
    counts = torch.zeros(points * width, dtype=torch.int64, device=device)
    if int(sum(nums)) == 0:
        return counts.view(points, width)[:, :num_classes]
    stream = NoiseStream(nums, shape, batch_size, generator, seeds, device, x.dtype, first_blocks)
    ones = torch.ones(stream.batch_rows, dtype=torch.int64, device=device)
    sigma = sigma.to(device=device, dtype=x.dtype)
    spread = (-1,) + (1,) * len(shape)
    for segments, noise in stream.batches():
        m = noise.shape[0]
        out = new_input(m) if new_input is not None else None
        if len(segments) == 1:
            # one point: its input and sigma broadcast over the batch, no gather
            p = segments[0][0]
            batch = torch.addcmul(x[p:p + 1], sigma[p:p + 1].view(spread), noise, out=out)
            offset: Tensor | int = p * width
        else:
            owner = torch.repeat_interleave(
                _index_on(device, [p for p, _ in segments]), _index_on(device, [k for _, k in segments]),
                output_size=m,
            )
            batch = torch.addcmul(x.index_select(0, owner), sigma.index_select(0, owner).view(spread), noise, out=out)
            offset = owner * width
        labels = classify(batch)
        if labels.shape != (m,):
            raise CheckpointError(f"classifier returned labels of shape {tuple(labels.shape)} for {m} inputs")
        counts.scatter_add_(0, labels.clamp(max=num_classes) + offset, ones[:m])
        if on_batch is not None:
            on_batch(m)
    return counts.view(points, width)[:, :num_classes]


def _index_on(device: torch.device, values: list[int]) -> Tensor:
    """int64 ``values`` on ``device``. To CUDA they go from pinned memory: a copy from pageable
    memory may wait for the GPU's queued work (the driver stages it), which would stall the
    sampling loop once per batch; from pinned memory the copy is asynchronous, and torch keeps
    the pinned block until the copy is done."""
    index = torch.tensor(values, dtype=torch.int64)
    if device.type == "cuda":
        return index.pin_memory().to(device, non_blocking=True)
    return index


def work_units(nums: Sequence[int], batch_size: int, workers: int, first_blocks: Sequence[int] | None = None
               ) -> list[list[tuple[int, int, int]]]:
    """The stream's noise blocks in runs of whole blocks: lists of (point, first block, rows).

    A run holds about four batches of rows, or less so that each thread gets at least four runs;
    it may span points (many points with few samples still share batches) and never splits a block.
    Block numbers count from ``first_blocks[p]`` (default 0), as in ``count_votes``.
    """
    total = sum(int(n) for n in nums)
    target = max(NOISE_BLOCK, min(4 * batch_size, math.ceil(total / (4 * workers))))
    units: list[list[tuple[int, int, int]]] = []
    unit: list[tuple[int, int, int]] = []
    filled = 0
    for p, num in enumerate(nums):
        start = 0 if first_blocks is None else int(first_blocks[p])
        first, rows = start, 0
        for b, size in enumerate(block_sizes(num), start=start):
            rows += size
            filled += size
            if filled >= target:
                unit.append((p, first, rows))
                units.append(unit)
                unit, filled, first, rows = [], 0, b + 1, 0
        if rows:
            unit.append((p, first, rows))
    if unit:
        units.append(unit)
    return units


_pool_lock = threading.Lock()
_pool: tuple[ThreadPoolExecutor, int] | None = None


def sampling_pool(workers: int) -> ThreadPoolExecutor:
    """The process-wide pool of at least ``workers`` sampling threads, kept between calls.

    Kept and shared, because a new thread pays one-off costs on its first forward passes
    (thread-local library state), and because many threads that have run OpenMP code slow down
    the multi-threaded forward passes of the main thread (measured: 3x for a small MLP with 20
    such threads). Use it inside ``one_torch_thread``, so torch gives each thread one intra-op
    thread for good.
    """
    global _pool
    with _pool_lock:
        if _pool is None or _pool[1] < workers:
            if _pool is not None:
                _pool[0].shutdown(wait=False)
            _pool = (ThreadPoolExecutor(workers, thread_name_prefix="smoothviz-sample"), workers)
        return _pool[0]


_torch_threads_lock = threading.Lock()
_torch_threads_users = 0
_torch_threads_before = 1


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch's intra-op threads set to 1 while any sampling threads run (restored by the last)."""
    global _torch_threads_users, _torch_threads_before
    with _torch_threads_lock:
        if _torch_threads_users == 0:
            _torch_threads_before = torch.get_num_threads()
            torch.set_num_threads(1)
        _torch_threads_users += 1
    try:
        yield
    finally:
        with _torch_threads_lock:
            _torch_threads_users -= 1
            if _torch_threads_users == 0:
                torch.set_num_threads(_torch_threads_before)


def _count_threaded(
    classify: Classifier, x: Tensor, sigma: Tensor, nums: Sequence[int], num_classes: int, batch_size: int,
    seeds: Sequence[int], on_batch: Callable[[int], None] | None, new_input: Callable[[int], Tensor] | None,
    workers: int, first_blocks: Sequence[int] | None = None,
) -> Tensor:
    """``count_votes`` with ``workers`` threads taking work units in turn; same counts as ``_count``."""
    units = iter(work_units(nums, batch_size, workers, first_blocks))
    take = threading.Lock()
    stop = threading.Event()
    done: queue.SimpleQueue[int | None] = queue.SimpleQueue()  # rows per batch; None: a thread ended

    def work() -> Tensor:
        total = torch.zeros((x.shape[0], num_classes), dtype=torch.int64, device=x.device)
        generator = torch.Generator(device=x.device)
        try:
            with torch.inference_mode():
                while not stop.is_set():
                    with take:
                        unit = next(units, None)
                    if unit is None:
                        break
                    owners = [p for p, _, _ in unit]
                    index = torch.tensor(owners, device=x.device)
                    votes = _count(classify, x[index], sigma[index], [rows for _, _, rows in unit], num_classes,
                                   batch_size, generator, [seeds[p] for p in owners], done.put, new_input,
                                   [first for _, first, _ in unit])
                    total.index_add_(0, index, votes)
        except BaseException:
            stop.set()
            raise
        finally:
            done.put(None)
        return total

    with one_torch_thread():
        pool = sampling_pool(workers)
        futures = [pool.submit(work) for _ in range(workers)]
        try:
            ended = 0
            while ended < workers:
                rows = done.get()
                if rows is None:
                    ended += 1
                elif on_batch is not None:
                    on_batch(rows)
        finally:
            stop.set()
            for future in futures:  # every thread finishes its unit before this returns or raises
                future.exception()
        return torch.stack([f.result() for f in futures]).sum(0)
