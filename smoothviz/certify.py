"""Monte Carlo engine: CERTIFY and PREDICT of Cohen et al. (2019) with sigma(x) per point.

Cohen, Rosenfeld, Kolter, "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019,
Section 3.2 (the public code's ``core.py`` restates it):

    CERTIFY(f, sigma, x, n0, n, alpha):
        counts0 <- SAMPLEUNDERNOISE(f, x, n0, sigma)
        cA      <- top index in counts0
        counts  <- SAMPLEUNDERNOISE(f, x, n, sigma)
        pA      <- LOWERCONFBOUND(counts[cA], n, 1 - alpha)
        if pA > 1/2 return prediction cA and radius R(pA) else ABSTAIN

    PREDICT(f, sigma, x, n, alpha):
        counts  <- SAMPLEUNDERNOISE(f, x, n, sigma)
        cA, cB  <- top two indices in counts
        nA, nB  <- counts[cA], counts[cB]
        if BINOMPVALUE(nA, nA + nB, 0.5) <= alpha return cA else ABSTAIN

Here sigma = sigma(x) may depend on the point; R(pA) is the sound input-dependent radius of
Sukenik et al. (2022) (Cohen's sigma*Phi^-1(pA) when r = 0), with the naive radius kept for
comparison.

Engine design (smoothviz.votes, smoothviz.noise): many points are sampled in one forward batch on
the device; noise is drawn on the device; votes are counted on the device with ``scatter_add_`` at
point*num_classes + class; on a CPU, one sampling thread per core. The
noise of each point comes in blocks of ``noise.NOISE_BLOCK`` rows, each block drawn from the generator
reseeded with a seed derived from (seed, idx, stage, block): the counts of a point then depend
only on (seed, idx), not on the batch size, the chunking, or which other points share a batch,
so a resumed run reproduces a clean run exactly. A run with sequential settings (anytime-valid
stopping instead of a fixed n) is executed by ``smoothviz.sequential_engine`` on the same
engine classifier, store and cancellation.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from smoothviz import bounds, cost, speed
from smoothviz.data import Dataset, load_dataset, resolve_name
from smoothviz.device import resolve_device
from smoothviz.errors import Cancelled, CheckpointError, InvalidArgument, SmoothvizError, StoreError
from smoothviz.knn_reference import build_run_sigma
from smoothviz.models import load_checkpoint
from smoothviz.noise import derive_seed
from smoothviz.sequential import FixedRadiusRule, RadiusRule
from smoothviz.sigma import SigmaFunction, canonical_spec, check_sigma_values, parse_sigma_spec, span_warning
from smoothviz.store import Store, file_sha256
from smoothviz.votes import Classifier, argmax_classifier, check_sigma, count_votes, sampling_threads

ABSTAIN = -1
STAGE_SELECTION, STAGE_ESTIMATION, STAGE_PREDICT = 0, 1, 2
CANCEL_POLL_SECONDS = 0.5  # how often a running certification reads the store's cancel flag
IN_FLIGHT_SECONDS = 2.0  # how often a running sequential run records the bounds of its points in flight

ProgressFn = Callable[[dict], None]
CancelFn = Callable[[], bool]


@dataclass
class PointResult:
    """CERTIFY's outcome for one point (predict = -1 when abstaining)."""

    idx: int
    label: int
    predict: int
    correct: bool
    p_a_lower: float
    sigma: float
    radius: float
    naive_radius: float
    counts: list[int] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class PredictResult:
    """PREDICT's outcome for one point (predict = -1 when the binomial test is not significant)."""

    idx: int
    label: int
    predict: int
    correct: bool
    count_a: int
    count_b: int
    p_value: float
    sigma: float
    counts: list[int] = field(default_factory=list)
    seconds: float = 0.0


def sample_counts(
    model: nn.Module | Classifier,
    x: Tensor,
    sigma: Tensor,
    num: int,
    num_classes: int,
    batch_size: int,
    generator: torch.Generator,
    seeds: Sequence[int] | None = None,
) -> Tensor:
    """Votes of ``num`` noisy samples of each point: int64 [B, num_classes] counted on the device.

    ``model`` is an nn.Module (argmax of its logits) or a classifier returning labels; a prepared
    classifier's ``new_input`` gets the batches written in its memory format (or, with a CUDA
    graph, into the graph's input), as in a certification run.
    """
    if isinstance(model, nn.Module):
        classify, new_input = argmax_classifier(model), None
    else:
        classify, new_input = model, getattr(model, "new_input", None)
    with torch.inference_mode():
        return count_votes(classify, x, sigma, [int(num)] * x.shape[0], num_classes, batch_size,
                           generator, seeds, new_input=new_input)


def _validate(n0: int | None, n: int, alpha: float | None, batch_size: int | None) -> None:
    """Sample counts, alpha and batch size in range (None: not given, not checked)."""
    if n < 1:
        raise InvalidArgument(f"n must be >= 1, got {n}")
    if n0 is not None and not 1 <= n0 <= n:
        raise InvalidArgument(f"n0 must be in [1, n={n}], got {n0}")
    if alpha is not None and not 0.0 < alpha < 1.0:
        raise InvalidArgument(f"alpha must be in (0, 1), got {alpha}")
    if batch_size is not None and batch_size < 1:
        raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")


def default_chunk_points(batch_size: int, samples_per_point: int) -> int:
    """Points per chunk: about eight full batches, so the chunk's last partial batch costs little."""
    return max(1, math.ceil(8 * batch_size / max(1, samples_per_point)))


class _Progress:
    """Rate and ETA in points, from samples done, for the engine's progress callback."""

    def __init__(self, total_points: int, samples_per_point: int, progress: ProgressFn | None,
                 cancel: CancelFn | None) -> None:
        self.total = total_points
        self.per_point = samples_per_point
        self.progress = progress
        self.cancel = cancel
        self.samples = 0
        self.done = 0
        self.t0 = time.perf_counter()

    def on_batch(self, rows: int) -> None:
        self.samples += rows
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled")
        self.report()

    def point_done(self, count: int) -> None:
        self.done += count
        self.samples = self.done * self.per_point
        self.report()

    def report(self) -> None:
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self.t0
        equiv = self.samples / self.per_point
        rate = equiv / elapsed if elapsed > 0 and equiv > 0 else None
        eta = (self.total - equiv) / rate if rate else None
        self.progress({"done": self.done, "total": self.total, "rate": rate, "eta": eta,
                       "fraction": equiv / self.total if self.total else 1.0,
                       "samples": self.samples, "elapsed": elapsed})


def _check_totals(votes: np.ndarray, nums: Sequence[int]) -> None:
    """Every sample must have voted for one of the classes (else the model's outputs do not fit)."""
    if not np.array_equal(votes.sum(axis=1), np.asarray(nums)):
        raise CheckpointError("the classifier returned labels outside [0, num_classes): "
                              "its output size does not match the dataset's classes")


def _prepare(model: nn.Module | Classifier, device: torch.device) -> tuple[Classifier, Callable[[int], Tensor] | None]:
    if isinstance(model, nn.Module):
        return argmax_classifier(model.to(device).eval()), None
    return model, getattr(model, "new_input", None)


def _chunk_sigma(
    sigma_fn: Callable[[Tensor], Tensor], sigmas: Tensor | None, xs: Tensor, start: int, stop: int,
    device: torch.device, idx: Sequence[int],
) -> Tensor:
    """sigma(x) of the chunk's points as float32 [m] on ``device``, checked to lie within the limits."""
    if sigmas is None:
        sig = sigma_fn(xs)
    else:
        sig = sigmas[start:stop]
    sig = sig.to(device=device, dtype=torch.float32).reshape(-1)
    check_sigma(sig, stop - start)
    check_sigma_values(sig, getattr(sigma_fn, "spec", "") or "sigma(x)", idx[start:stop])
    return sig


def point_labels(x: Tensor, labels: Sequence[int] | Tensor, idx: Sequence[int]) -> tuple[list[int], list[int]]:
    """``labels`` and ``idx`` as lists of ints, checked to give one entry per row of ``x`` (every engine's inputs)."""
    labels = [int(v) for v in (labels.tolist() if isinstance(labels, Tensor) else labels)]
    idx = [int(i) for i in idx]
    if not (len(labels) == len(idx) == x.shape[0]):
        raise InvalidArgument("x, labels and idx must have one entry per point")
    return labels, idx


def iter_certify(
    model: nn.Module | Classifier,
    x: Tensor,
    labels: Sequence[int] | Tensor,
    idx: Sequence[int],
    sigma_fn: Callable[[Tensor], Tensor],
    n0: int,
    n: int,
    alpha: float,
    num_classes: int,
    batch_size: int,
    device: torch.device | str,
    seed: int,
    r: float | None,
    dim: int,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    chunk_points: int | None = None,
    sigmas: Tensor | None = None,
) -> Iterator[PointResult]:
    """CERTIFY every point, yielding each PointResult as soon as its chunk is done.

    Selection and estimation samples of a chunk of points share forward batches (they are
    independent draws: stage 0 and stage 1 seeds). Raises Cancelled when ``cancel()`` turns true
    (checked after every batch); points already yielded stay valid. ``sigmas``: sigma(x) of
    each point computed beforehand (``prepare_run`` does), so ``sigma_fn`` is not called again.
    sigma(x) outside [SIGMA_MIN, SIGMA_MAX] is refused before a chunk is sampled. ``r`` None (a
    sigma without semi-elasticity, such as data-dependent smoothing): the sound radius is 0 and
    only the naive radius is computed.
    """
    _validate(n0, n, alpha, batch_size)
    device = torch.device(device)
    labels, idx = point_labels(x, labels, idx)
    classify, new_input = _prepare(model, device)
    generator = torch.Generator(device=device)
    chunk = chunk_points or default_chunk_points(batch_size, n0 + n)
    tracker = _Progress(len(idx), n0 + n, progress, cancel)
    tracker.report()
    for start in range(0, len(idx), chunk):
        stop = min(start + chunk, len(idx))
        t0 = time.perf_counter()
        xs = x[start:stop].to(device=device, dtype=torch.float32)
        m = stop - start
        with torch.inference_mode():
            sig = _chunk_sigma(sigma_fn, sigmas, xs, start, stop, device, idx)
            # virtual points: first the m selection samplings, then the m estimation samplings
            votes = count_votes(
                classify, torch.cat([xs, xs]), torch.cat([sig, sig]), [n0] * m + [n] * m,
                num_classes, batch_size, generator,
                [derive_seed(seed, i, STAGE_SELECTION) for i in idx[start:stop]]
                + [derive_seed(seed, i, STAGE_ESTIMATION) for i in idx[start:stop]],
                on_batch=tracker.on_batch, new_input=new_input,
            ).cpu().numpy()
        _check_totals(votes, [n0] * m + [n] * m)
        point_sigmas = sig.cpu().numpy().astype(np.float64)
        selection, estimation = votes[:m], votes[m:]
        guess = selection.argmax(axis=1)  # first maximum on ties, as numpy documents
        n_a = estimation[np.arange(m), guess]
        p_a = np.asarray(bounds.clopper_pearson_lower(n_a, n, alpha), dtype=np.float64).reshape(m)
        certified = p_a > 0.5
        radius = np.zeros(m)
        naive = np.zeros(m)
        if certified.any():
            # Without a semi-elasticity nothing is certified beyond x0 itself: the sound radius stays 0.
            # The prediction at x0 is still a (1 - alpha) statement (the smoothed classifier with
            # sigma(x0) returns it there), so it counts at radius 0.
            if r is not None:
                radius[certified] = bounds.input_dependent_radius(p_a[certified], point_sigmas[certified], r, dim)
            naive[certified] = bounds.naive_radius(p_a[certified], point_sigmas[certified])
        seconds = (time.perf_counter() - t0) / m
        for j in range(m):
            predict = int(guess[j]) if certified[j] else ABSTAIN
            yield PointResult(
                idx=idx[start + j], label=labels[start + j], predict=predict,
                correct=predict == labels[start + j], p_a_lower=float(p_a[j]), sigma=float(point_sigmas[j]),
                radius=float(radius[j]), naive_radius=float(naive[j]),
                counts=[int(c) for c in estimation[j]], seconds=seconds,
            )
        tracker.point_done(m)


def certify_points(
    model: nn.Module | Classifier,
    x: Tensor,
    labels: Sequence[int] | Tensor,
    idx: Sequence[int],
    sigma_fn: Callable[[Tensor], Tensor],
    n0: int,
    n: int,
    alpha: float,
    num_classes: int,
    batch_size: int,
    device: torch.device | str,
    seed: int,
    r: float | None,
    dim: int,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    chunk_points: int | None = None,
) -> list[PointResult]:
    """CERTIFY of Cohen et al. with sigma(x) per point; the list of every point's result."""
    return list(iter_certify(model, x, labels, idx, sigma_fn, n0, n, alpha, num_classes, batch_size,
                             device, seed, r, dim, progress, cancel, chunk_points))


def certify_test_points(
    model: nn.Module,
    dataset: Dataset,
    indices: list[int],
    sigma_fn: SigmaFunction,
    *,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    seed: int,
) -> list[PointResult]:
    """CERTIFY (Cohen et al. 2019, with sigma(x) and the sound radius) for the test points ``indices``.

    Runs on the model's device with r taken from ``sigma_fn`` and the dimension from ``dataset``,
    so the explorer and the playground certify exactly as a certification run would.
    """
    idx = torch.tensor(indices, dtype=torch.long)
    return certify_points(
        model,
        dataset.test_x[idx],
        dataset.test_y[idx],
        list(indices),
        sigma_fn,
        n0=n0,
        n=n,
        alpha=alpha,
        num_classes=dataset.num_classes,
        batch_size=batch_size,
        device=next(model.parameters()).device,
        seed=seed,
        r=None if sigma_fn.r is None else float(sigma_fn.r),
        dim=dataset.dim,
    )


def predict_points(
    model: nn.Module | Classifier,
    x: Tensor,
    labels: Sequence[int] | Tensor,
    idx: Sequence[int],
    sigma_fn: Callable[[Tensor], Tensor],
    n: int,
    alpha: float,
    num_classes: int,
    batch_size: int,
    device: torch.device | str,
    seed: int,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    chunk_points: int | None = None,
    sigmas: Tensor | None = None,
) -> list[PredictResult]:
    """PREDICT of Cohen et al.: abstain unless the top class beats the runner-up at level alpha.

    ``sigmas``: sigma(x) of each point computed beforehand, as for ``iter_certify``.
    """
    _validate(None, n, alpha, batch_size)
    device = torch.device(device)
    labels, idx = point_labels(x, labels, idx)
    if num_classes < 2:
        raise InvalidArgument(f"num_classes must be >= 2, got {num_classes}")
    classify, new_input = _prepare(model, device)
    generator = torch.Generator(device=device)
    chunk = chunk_points or default_chunk_points(batch_size, n)
    tracker = _Progress(len(idx), n, progress, cancel)
    tracker.report()
    out: list[PredictResult] = []
    for start in range(0, len(idx), chunk):
        stop = min(start + chunk, len(idx))
        t0 = time.perf_counter()
        xs = x[start:stop].to(device=device, dtype=torch.float32)
        m = stop - start
        with torch.inference_mode():
            sig = _chunk_sigma(sigma_fn, sigmas, xs, start, stop, device, idx)
            votes = count_votes(
                classify, xs, sig, [n] * m, num_classes, batch_size, generator,
                [derive_seed(seed, i, STAGE_PREDICT) for i in idx[start:stop]],
                on_batch=tracker.on_batch, new_input=new_input,
            ).cpu().numpy()
        _check_totals(votes, [n] * m)
        # top two classes; a stable sort keeps the lower class index first on ties
        order = np.argsort(-votes, axis=1, kind="stable")
        top, second = order[:, 0], order[:, 1]
        n_a = votes[np.arange(m), top]
        n_b = votes[np.arange(m), second]
        pvalue = np.asarray(bounds.binomial_test_pvalue(n_a, n_b), dtype=np.float64).reshape(m)
        point_sigmas = sig.cpu().numpy().astype(np.float64)
        seconds = (time.perf_counter() - t0) / m
        for j in range(m):
            predict = int(top[j]) if pvalue[j] <= alpha else ABSTAIN
            out.append(PredictResult(
                idx=idx[start + j], label=labels[start + j], predict=predict,
                correct=predict == labels[start + j], count_a=int(n_a[j]), count_b=int(n_b[j]),
                p_value=float(pvalue[j]), sigma=float(point_sigmas[j]),
                counts=[int(c) for c in votes[j]], seconds=seconds,
            ))
        tracker.point_done(m)
    return out


class _ThrottledCancel:
    """Combine a caller's cancel flag with the store's, read at most every CANCEL_POLL_SECONDS."""

    def __init__(self, store: Store, run_id: int, cancel: CancelFn | None) -> None:
        self.store, self.run_id, self.cancel = store, run_id, cancel
        self.last = -math.inf

    def __call__(self) -> bool:
        if self.cancel is not None and self.cancel():
            return True
        now = time.monotonic()
        if now - self.last < CANCEL_POLL_SECONDS:
            return False
        self.last = now
        return self.store.cancel_requested(self.run_id)


def select_split(dataset: Dataset, split: str) -> tuple[Tensor, Tensor]:
    """(inputs, labels) of the ``test`` or ``train`` split."""
    if split == "test":
        return dataset.test_x, dataset.test_y
    if split == "train":
        return dataset.train_x, dataset.train_y
    raise InvalidArgument(f"split {split!r}: expected 'test' or 'train'")


@dataclass
class EngineClassifier:
    """The base classifier as the engine calls it, with the batch size and memory it was checked for.

    ``bytes_per_sample``: measured memory of one sample (speed.measure_memory_per_sample);
    ``threads``: sampling threads that each hold a batch (votes.sampling_threads).
    """

    classify: Classifier
    batch_size: int
    bytes_per_sample: int
    threads: int


@dataclass
class PreparedRun:
    """Everything a run needs, loaded and checked before anything is sampled or written.

    ``sigmas`` holds sigma(x) of ``indices`` (same order) on ``device``; ``sigma_warning`` is
    ``sigma.span_warning`` of them (None when they are reasonable). ``rule``: the stopping rule
    of a sequential run (``smoothviz.sequential_engine``), None for fixed n; ``sequential``: the
    settings it was built from, as the run records them.
    """

    dataset: Dataset
    split: str
    checkpoint: str
    meta: dict
    model: nn.Module
    sigma_fn: SigmaFunction
    indices: list[int]
    sigmas: Tensor
    device: torch.device
    engine: EngineClassifier
    sigma_warning: str | None
    rule: RadiusRule | FixedRadiusRule | None = None
    sequential: dict | None = None

    def inputs(self, indices: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        """(x, labels, sigma(x)) of ``indices``, a subset of the run's points."""
        position = {i: p for p, i in enumerate(self.indices)}
        xs, ys = select_split(self.dataset, self.split)
        select = torch.tensor(list(indices), dtype=torch.int64)
        rows = torch.tensor([position[int(i)] for i in indices], dtype=torch.int64)
        return xs[select], ys[select], self.sigmas[rows.to(self.sigmas.device)]


def prepare_run(
    run: dict,
    device: str | None = None,
    batch_size: int | str | None = None,
    trust_code: bool = False,
    sigma_fn: SigmaFunction | None = None,
) -> PreparedRun:
    """Load and check every part of a run description before it executes; writes nothing.

    ``run`` holds the store's run fields (``dataset``, ``split``, ``checkpoint``, ``sigma_spec``,
    ``indices``, ``options``, ``device``, ``batch_size``; ``n0``, ``n``, ``alpha``, and
    ``checkpoint_sha256`` / ``id`` when known). Checked: device and options, the sizes, the
    checkpoint (unchanged since the run was recorded; header, weights and a probe batch fit the
    dataset), the indices, the sigma function built on the dataset (k <= training points) and
    sigma(x) on every chosen point, and the memory of a batch. ``device`` and ``batch_size``
    override the recorded ones. Raises a one-line SmoothvizError naming what is wrong.

    ``options["model"]`` describes a foreign model (``model_sources.run_record``), loaded by
    ``model_sources.load_run_model``; one that runs code (user code, an archive) loads only with
    ``trust_code``. ``options["sigma_reference"]`` names the kNN sigma's reference points.
    ``sigma_fn``: the run's sigma function built already (a sweep builds its runs' kNN sigmas
    from shared distances, ``sigma.KNN.with_parameters``), on ``device``; refused unless its
    parameters are the run's spec (an m the spec leaves out may be any).
    """
    dev = resolve_device(device or run.get("device") or "auto")
    options = dict(run.get("options") or {})
    if engine_options(options).cuda_graphs and dev.type != "cuda":
        raise InvalidArgument(f"--cuda-graphs needs a CUDA device, not {dev}")
    if run.get("n") is not None:
        _validate(run.get("n0"), int(run["n"]), run.get("alpha"), None)
    name = resolve_name(run["dataset"])
    checkpoint = run["checkpoint"]
    if checkpoint is None:
        raise InvalidArgument("checkpoint: the run names no checkpoint")
    recorded = run.get("checkpoint_sha256")
    if recorded is not None and file_sha256(checkpoint) not in (None, recorded):
        where = f" since run {run['id']} was created" if run.get("id") is not None else ""
        raise CheckpointError(f"{checkpoint} changed{where} (SHA-256 differs)")
    dataset = load_dataset(name)
    if options.get("model") is None:
        model, meta = load_checkpoint(checkpoint, device=dev, expected_dataset=dataset.name)
    else:
        from smoothviz.model_sources import load_run_model

        model, meta = load_run_model(str(checkpoint), options["model"], dataset, dev, trust_code=trust_code)
    split = str(run.get("split") or "test")
    xs, _ = select_split(dataset, split)
    indices = [int(i) for i in run["indices"]]
    if not indices:
        raise InvalidArgument("indices: no point to certify")
    bad = [i for i in indices if not 0 <= i < xs.shape[0]]
    if bad:
        raise InvalidArgument(f"indices {bad[:5]} are outside the {split} split (size {xs.shape[0]})")
    if sigma_fn is None:
        sigma_fn = build_run_sigma(run["sigma_spec"], dataset, options.get("sigma_reference"), dev, model=model)
    else:
        check_given_sigma(sigma_fn, run["sigma_spec"])
    with torch.inference_mode():
        sigmas = sigma_fn(xs[torch.tensor(indices, dtype=torch.int64)].to(dev)).to(torch.float32).reshape(-1)
    check_sigma(sigmas, len(indices))
    check_sigma_values(sigmas, sigma_fn.spec, indices)
    from smoothviz.sequential_engine import rule_for_run  # it imports this module

    if sigma_fn.r is None and run.get("sequential") is not None:
        raise InvalidArgument(f"sigma {sigma_fn.spec}: a sequential run stops at a certified radius, and a sigma "
                              "without semi-elasticity certifies none; use a fixed n")
    rule = rule_for_run(run, 0.0 if sigma_fn.r is None else float(sigma_fn.r), dataset.dim)
    engine = engine_classifier(model, options, dev, batch_size or run.get("batch_size"), dataset.input_shape)
    return PreparedRun(dataset, split, str(checkpoint), meta, model, sigma_fn, indices, sigmas, dev, engine,
                       span_warning(sigmas), rule, run.get("sequential"))


def check_given_sigma(sigma_fn: SigmaFunction, spec: str) -> None:
    """InvalidArgument unless ``sigma_fn`` is the sigma function ``spec`` describes (for a kNN
    spec without m, any m: it is computed from the data)."""
    wanted = parse_sigma_spec(spec)
    have = sigma_fn.params()
    if wanted.get("kind") == "knn" and wanted.get("m") is None:
        have = {**have, "m": None}
    if have.get("kind") != wanted.get("kind") or canonical_spec(have) != canonical_spec(wanted):
        raise InvalidArgument(f"sigma: the function given is {sigma_fn.spec}, the run's is {spec}")


# Certifies a run's missing points elsewhere (smoothviz.distributed): called as
# distribute(prepared, run, todo, sink, progress, cancel), it hands every point of todo, once, to
# sink (which stores it) as soon as it is certified, and raises Cancelled when cancel() turns true.
Distribute = Callable[[PreparedRun, dict, list[int], Callable[[PointResult], None], ProgressFn | None, CancelFn],
                      None]


def check_executable(run: dict) -> None:
    """A stored run can execute: a certify run (not an imported log) that no live process runs."""
    if run["kind"] != "certify":
        raise StoreError(f"run {run['id']} is an imported log; there is nothing to execute")
    if run["status"] == "running" and run["pid"] != os.getpid():
        raise StoreError(f"run {run['id']} is already being executed by process {run['pid']} on {run['host']}")


def run_certification(
    store: Store,
    run_id: int,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    device: str | None = None,
    batch_size: int | str | None = None,
    prepared: PreparedRun | None = None,
    trust_code: bool = False,
    distribute: Distribute | None = None,
) -> str:
    """Execute or resume a certify run recorded in the store; returns its final status.

    First the run is checked with ``prepare_run`` (or ``prepared``, which the caller made from
    this run): a run that cannot execute is refused with its record left as it was. Then it is
    marked running, skips points already stored, commits each point as its chunk finishes, and
    stops when ``cancel()`` or the store's cancel flag turns true (status "cancelled").
    ``device`` and ``batch_size`` override the recorded ones (neither changes the counts'
    distribution; the batch size does not change them at all). ``trust_code`` lets a run whose
    model runs code load it (``prepare_run``). ``distribute`` certifies the missing points in
    place of this process's own loop (``smoothviz.distributed``: every rank of a torchrun launch
    takes a share; their results reach this process, which stores them). Errors while it runs
    set status "failed" and propagate.
    """
    run = store.run(run_id)
    check_executable(run)
    if prepared is None:
        prepared = prepare_run(run, device, batch_size, trust_code)
    elif (prepared.indices != [int(i) for i in run["indices"]] or prepared.checkpoint != str(run["checkpoint"])
          or prepared.sequential != run.get("sequential")):
        raise InvalidArgument(f"run {run_id}: the prepared run describes other points, another checkpoint "
                              "or another sequential rule")
    store.set_status(run_id, "running")
    try:
        status = _execute(store, run, prepared, progress, _ThrottledCancel(store, run_id, cancel), distribute)
    except Cancelled:
        done = len(store.done_indices(run_id))
        store.set_status(run_id, "cancelled", f"cancelled after {done} of {cost.plural(run['total'], 'point')}")
        return "cancelled"
    except KeyboardInterrupt:
        store.set_status(run_id, "interrupted", "interrupted by the user; rerun to resume")
        raise
    except SmoothvizError as exc:
        store.set_status(run_id, "failed", str(exc))
        raise
    except BaseException as exc:
        store.set_status(run_id, "failed", f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
        raise
    return status


class _InFlightRecorder:
    """The progress callback of a sequential run: records the engine's ``pool`` (the bounds of
    the points in flight) in the store at most every ``interval`` seconds (default
    IN_FLIGHT_SECONDS), then passes the progress on. The rows go when the run's status changes
    (``Store.set_status``)."""

    def __init__(self, store: Store, run_id: int, progress: ProgressFn | None, interval: float | None = None) -> None:
        self.store, self.run_id, self.progress = store, run_id, progress
        self.interval = IN_FLIGHT_SECONDS if interval is None else interval
        self.last = -math.inf
        self.written: object = None

    def __call__(self, info: dict) -> None:
        pool = info.get("pool")
        now = time.monotonic()
        if pool is not None and pool is not self.written and now - self.last >= self.interval:
            self.store.set_in_flight(self.run_id, pool)
            self.written, self.last = pool, now
        if self.progress is not None:
            self.progress(info)


def _execute(store: Store, run: dict, prepared: PreparedRun, progress: ProgressFn | None, cancel: CancelFn,
             distribute: Distribute | None = None) -> str:
    run_id = int(run["id"])
    if prepared.rule is not None:
        progress = _InFlightRecorder(store, run_id, progress)
    store.set_sigma_params(run_id, prepared.sigma_fn.params())
    done = store.done_indices(run_id)
    todo = [i for i in prepared.indices if i not in done]
    if distribute is not None:  # called even when nothing is left: the other ranks wait to be told
        distribute(prepared, run, todo, lambda result: store.add_result(run_id, result), progress, cancel)
    elif todo:
        xs, ys, sigmas = prepared.inputs(todo)
        engine, dataset = prepared.engine, prepared.dataset
        if prepared.rule is not None:
            from smoothviz.sequential_engine import iter_certify_sequential  # it imports this module

            results: Iterator[PointResult] = iter_certify_sequential(
                engine.classify, xs, ys, todo, sigmas, int(run["n0"]), prepared.rule, dataset.num_classes,
                engine.batch_size, prepared.device, int(run["seed"] or 0), progress=progress, cancel=cancel,
            )
        else:
            results = iter_certify(
                engine.classify, xs, ys, todo, prepared.sigma_fn, int(run["n0"]), int(run["n"]),
                float(run["alpha"]), dataset.num_classes, engine.batch_size, prepared.device,
                int(run["seed"] or 0), prepared.sigma_fn.r, dataset.dim, progress=progress, cancel=cancel,
                sigmas=sigmas,
            )
        for result in results:
            store.add_result(run_id, result)
    store.set_status(run_id, "done", f"{cost.plural(len(prepared.indices), 'point')} certified")
    return "done"


# EngineOptions fields that change how fast the classifier runs, not which samples it sees; the
# batch size is recorded in its own column and never changes the counts.
OPTION_KEYS = ("autocast", "channels_last", "compile", "cuda_graphs")
# Run options that describe the run rather than the engine: a foreign model
# (model_sources.run_record), the kNN sigma's reference points (knn_reference.reference_record)
# and the audit of the sigma's semi-elasticity (smoothviz.commands.audit_sigma records it).
DESCRIPTION_KEYS = ("model", "sigma_reference", "sigma_audit")


def engine_options(options: dict | None) -> speed.EngineOptions:
    """The run's evaluation options as EngineOptions; unknown keys are rejected, not ignored."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTION_KEYS) - set(DESCRIPTION_KEYS))
    if unknown:
        raise InvalidArgument(f"unknown engine options {unknown}; known: {', '.join(OPTION_KEYS)}")
    return speed.EngineOptions(**{k: v for k, v in options.items() if k in OPTION_KEYS})


def engine_classifier(
    model: nn.Module,
    options: dict | None,
    device: torch.device | str,
    batch_size: int | str | None,
    input_shape: tuple[int, ...],
) -> EngineClassifier:
    """The base classifier as the engine calls it, prepared with the run's speed options.

    ``batch_size`` "auto" is measured from free device memory, None is the engine's default
    (speed.default_batch_size: on CUDA up to 8192 as the measured memory allows). The
    memory of a batch (measured on a probe batch, times the sampling threads that each hold one)
    is checked against free memory before anything batch-sized is allocated (compilation and
    CUDA graphs allocate a full batch). See smoothviz.speed for the options and the soundness
    caveat of autocast. Options a run does not set take the engine's defaults (channels_last on
    CPU for (C, H, W) inputs).
    """
    device = torch.device(device)
    opts = engine_options(options)
    shape = tuple(int(v) for v in input_shape)
    if "channels_last" not in (options or {}) and device.type == "cpu" and len(shape) == 3:
        # CPU default for images: NHWC convolutions ran 2x faster for the shipped digits and
        # Fashion-MNIST CNNs on the 2-core dev machine; same noise draws, same fp32 classifier.
        opts = replace(opts, channels_last=True)
    # A model that takes no forward hooks (model_sources.ArchiveModule) measures itself.
    measure = getattr(model, "measure_memory_per_sample", None)
    probe = (measure if callable(measure) else partial(speed.measure_memory_per_sample, model))(shape, device, opts)
    if batch_size == "auto":
        size = speed.auto_batch_size(model, shape, device, options=opts, probe=probe)
    elif batch_size is None:
        size = speed.default_batch_size(device, model, shape, opts, probe)
    else:
        size = int(batch_size)
    eager = not (opts.compile or opts.cuda_graphs)
    threads = sampling_threads(argmax_classifier(model), device, seeded=True) if eager else 1
    cost.check_memory(shape, size, device, probe.bytes_per_sample, threads)
    predictor = speed.prepare_model(model, opts, device, (size, *shape))
    return EngineClassifier(predictor, size, probe.bytes_per_sample, threads)


def make_classifier(
    model: nn.Module,
    options: dict | None,
    device: torch.device | str,
    batch_size: int | str | None,
    input_shape: tuple[int, ...],
) -> tuple[Classifier, int]:
    """(classifier, batch size) of ``engine_classifier``."""
    engine = engine_classifier(model, options, device, batch_size, input_shape)
    return engine.classify, engine.batch_size
