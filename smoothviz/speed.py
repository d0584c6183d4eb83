"""Speed options of the Monte Carlo engine and the pieces that apply them.

The engine spends its time in three places: drawing Gaussian noise, the base classifier's forward
pass, and counting votes. This module prepares the classifier once per run (memory format,
autocast, torch.compile, CUDA graphs, a static batch size), builds noisy batches for several
points at a time directly in the model's memory format, counts votes on the device without host
syncs, and picks a batch size from measured memory.

Soundness: every option except ``autocast`` evaluates the same fp32 classifier. With autocast the
certificate holds for the classifier *as evaluated under autocast* (bf16/fp16 arithmetic), which
is a different function from the fp32 model; this is why it is an opt-in "fast" mode. On CUDA,
"fp32" convolutions run in TF32 by default (torch's setting, recorded as ``applied["precision"]``)
and cuDNN chooses kernels by batch size and memory format, so the logits of one sample can differ
in their last bits between batch sizes or formats: the noise is identical, and only a sample
whose top two logits nearly tie can change its label (tests/test_cuda.py bounds this).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from smoothviz.errors import InvalidArgument

AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}

# CPU batch size: the largest power of two whose measured activations fit in CPU_BATCH_BYTES,
# kept within [MIN_CPU_BATCH_SIZE, MAX_CPU_BATCH_SIZE]. Measured on the 2-core dev machine
# (benchmarks/RESULTS.md, "Speed"): the shipped CNNs (115-290 kB of activations per sample) run
# fastest near 256 and no faster above it, while an MLP on 8x8 digits (4 kB per sample) ran 2x
# faster at 8192 than at 256, where per-batch overheads dominated. Small batches also keep
# progress and cancellation responsive.
CPU_BATCH_BYTES = 32 << 20
MIN_CPU_BATCH_SIZE = 256
MAX_CPU_BATCH_SIZE = 8192
MAX_AUTO_CUDA_BATCH_SIZE = 1 << 17
# CUDA default batch size: the largest power of two up to MAX_CUDA_BATCH_SIZE whose measured
# memory fits in CUDA_BATCH_BYTES and in CUDA_BATCH_FRACTION of the free memory. A CIFAR ResNet
# (a few hundred kB per sample) gets 8192, where a GPU is long saturated; an ImageNet ResNet-50
# (tens of MB per sample) gets a few hundred instead of a batch that cannot fit.
MAX_CUDA_BATCH_SIZE = 8192
CUDA_BATCH_BYTES = 16 << 30
CUDA_BATCH_FRACTION = 0.25
# Probe batches for measure_memory_per_sample: on CUDA many samples amortise the allocator's fixed
# costs (all charged to the samples); on a CPU the summed module outputs are proportional to the
# batch, so a few samples measure the same per-sample size at a fraction of the cost (an
# ImageNet ResNet-50 forward pass takes about half a second per image on the dev CPU).
CUDA_PROBE_BATCH = 32
CPU_PROBE_BATCH = 2


@dataclass(frozen=True)
class EngineOptions:
    """How the engine evaluates the base classifier; recorded with each run.

    ``autocast``: None (fp32), "bf16" or "fp16" -- the "fast" mode; the certificate is then for
    the classifier as evaluated under autocast. ``channels_last``: run 4-D image models in NHWC
    memory format (same noise draws, same fp32 classifier); None (the default) turns it on for
    image inputs on a CPU, where it measured 1.6-1.9x faster on the shipped CNNs, and leaves it
    off elsewhere. ``compile``: torch.compile the model with inductor's freezing (falls back to
    eager with a warning when it fails). ``cuda_graphs``: capture the forward pass in a CUDA
    graph (CUDA only). ``batch_size``: samples per forward pass, an int, "auto" (from free device
    memory) or None (the engine's default).
    """

    autocast: str | None = None
    channels_last: bool | None = None
    compile: bool = False
    cuda_graphs: bool = False
    batch_size: int | str | None = None

    def __post_init__(self) -> None:
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            raise InvalidArgument(
                f"autocast must be one of {sorted(AUTOCAST_DTYPES)} or None, not {self.autocast!r}"
            )
        bs = self.batch_size
        if bs is not None and bs != "auto" and not (isinstance(bs, int) and bs >= 1):
            raise InvalidArgument(f"batch_size must be an integer >= 1 or 'auto', not {bs!r}")
        if self.channels_last not in (None, True, False):
            raise InvalidArgument(f"channels_last must be true, false or None (automatic), not {self.channels_last!r}")

    def to_dict(self) -> dict:
        """JSON-able form (bench results record it)."""
        return asdict(self)


def set_cpu_threads(threads: int | None = None) -> int:
    """Use every core this process may run on (or ``threads``); returns the thread count."""
    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:
            threads = os.cpu_count() or 1
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


# ---------------------------------------------------------------------------------------------
# Memory and the automatic batch size


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors: on CUDA the driver's free memory plus what PyTorch's caching
    allocator holds but no tensor uses (it serves new tensors from there first, and
    ``mem_get_info`` counts it as used); on a CPU MemAvailable of /proc/meminfo."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free) + max(0, int(cached))
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


@dataclass(frozen=True)
class MemoryProbe:
    """Memory a forward pass needs, measured at ``probe_batch`` samples.

    ``bytes_per_sample`` bounds the memory of one more sample in a batch (noise, noisy input,
    activations); ``method`` says how it was measured.
    """

    bytes_per_sample: int
    probe_batch: int
    method: str


def _module_output_bytes(model: nn.Module, run: Callable[[], object]) -> int:
    """Run ``run`` and return the total size of every tensor any submodule produced."""
    total = 0

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        stack = [output]
        while stack:
            item = stack.pop()
            if isinstance(item, Tensor):
                total += item.numel() * item.element_size()
            elif isinstance(item, (list, tuple)):
                stack.extend(item)
            elif isinstance(item, dict):
                stack.extend(item.values())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return total


def measure_memory_per_sample(
    model: nn.Module,
    input_shape: tuple[int, ...],
    device: torch.device,
    options: EngineOptions | None = None,
    probe_batch: int | None = None,
) -> MemoryProbe:
    """Measure the memory one sample of a batch costs, with a probe forward pass.

    CUDA: the allocator's peak (``max_memory_allocated``) during a probe at ``probe_batch``
    (default CUDA_PROBE_BATCH), all of it charged to the samples (an over-estimate for larger
    batches, so safe). CPU: there is no allocator peak to read, so every activation any module
    outputs is summed as if all were alive at once (inference frees them as it goes, so this
    bounds the peak), doubled for convolution work buffers; the default probe is CPU_PROBE_BATCH
    samples. Both add the noise and noisy-input tensors the engine keeps per sample.
    """
    options = options or EngineOptions()
    device = torch.device(device)
    if probe_batch is None:
        probe_batch = CUDA_PROBE_BATCH if device.type == "cuda" else CPU_PROBE_BATCH
    model = model.to(device).eval()
    x = torch.rand((probe_batch, *input_shape), device=device)
    per_input = math.prod(input_shape) * 4
    ctx = autocast_context(options, device)
    if device.type == "cuda":
        per_sample = math.ceil(_cuda_forward_peak(model, x, options) / probe_batch) + 2 * per_input
        return MemoryProbe(per_sample, probe_batch, "cuda max_memory_allocated")
    with torch.inference_mode(), ctx:
        out_bytes = _module_output_bytes(model, lambda: model(x).argmax(1))
    per_sample = 2 * math.ceil(out_bytes / probe_batch) + 3 * per_input
    return MemoryProbe(per_sample, probe_batch, "cpu sum of module outputs x2")


def _cuda_forward_peak(model: nn.Module, x: Tensor, options: EngineOptions) -> int:
    """Bytes the allocator's peak rises by while ``model`` classifies ``x`` (x itself not counted)."""
    device = x.device
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode(), autocast_context(options, device):
        model(x).argmax(1)
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def cuda_batch_peak(model: nn.Module, input_shape: tuple[int, ...], device: torch.device,
                    options: EngineOptions, batch: int) -> int | None:
    """Memory one engine batch of ``batch`` samples takes on CUDA, measured at that size: the
    forward pass's allocator peak plus the noise and the noisy batch (two inputs' worth); None
    when it does not fit at all (out of memory)."""
    per_input = math.prod(input_shape) * 4
    try:
        x = torch.rand((batch, *input_shape), device=device)
        return _cuda_forward_peak(model, x, options) + 2 * per_input * batch
    except torch.cuda.OutOfMemoryError:
        return None


def fit_measured_batch(batch: int, budget: int, peak_of: Callable[[int], int | None], tries: int = 4) -> int:
    """``batch``, or the first smaller one whose measured ``peak_of(batch)`` fits ``budget``.

    A probe at a few samples charges per sample what the kernels of a large batch may not stay
    within (a convolution algorithm chosen for the large batch can ask for a larger workspace), so
    the batch is measured at its own size and, while it does not fit, shrunk in proportion (to a
    multiple of 8, with 5% to spare). ``peak_of`` returns None for a batch that ran out of memory.
    """
    for _ in range(tries):
        peak = peak_of(batch)
        if peak is not None and peak <= budget:
            return batch
        smaller = int(batch * budget / peak * 0.95) if peak else batch // 2
        if smaller >= 8:
            smaller -= smaller % 8
        if batch == 1:
            break
        batch = max(1, min(smaller, batch - 1))
    raise InvalidArgument(f"no batch size measured within the memory budget ({budget} bytes) after {tries} tries")


def cpu_batch_size(
    model: nn.Module,
    input_shape: tuple[int, ...],
    options: EngineOptions | None = None,
    probe: MemoryProbe | None = None,
) -> int:
    """The engine's CPU batch size for ``model``: activations of about CPU_BATCH_BYTES per batch."""
    if probe is None:
        probe = measure_memory_per_sample(model, input_shape, torch.device("cpu"), options)
    fit = max(1, CPU_BATCH_BYTES // max(1, probe.bytes_per_sample))
    return int(min(MAX_CPU_BATCH_SIZE, max(MIN_CPU_BATCH_SIZE, 1 << (fit.bit_length() - 1))))


def auto_batch_size(
    model: nn.Module,
    input_shape: tuple[int, ...],
    device: torch.device,
    memory_fraction: float = 0.5,
    options: EngineOptions | None = None,
    max_batch: int | None = None,
    probe: MemoryProbe | None = None,
) -> int:
    """The largest batch whose measured memory fits in ``memory_fraction`` of free memory.

    Never exceeds the memory it measured: ``batch * probe.bytes_per_sample <= memory_fraction *
    available_memory(device)``, and on CUDA the batch is then measured at its own size
    (``cuda_batch_peak``, ``fit_measured_batch``). Capped at ``max_batch`` (default: a size beyond
    which throughput no longer grows, on a CPU ``cpu_batch_size``) and rounded down to a multiple
    of 8 when >= 8.
    """
    if not 0.0 < memory_fraction <= 1.0:
        raise InvalidArgument(f"memory_fraction must be in (0, 1], not {memory_fraction}")
    device = torch.device(device)
    if probe is None:
        probe = measure_memory_per_sample(model, input_shape, device, options)
    budget = int(memory_fraction * available_memory(device))
    batch = budget // max(1, probe.bytes_per_sample)
    if batch < 1:
        raise InvalidArgument(
            f"not enough free memory on {device} for one sample "
            f"({probe.bytes_per_sample} bytes needed, {budget} available)"
        )
    if max_batch is None:
        if device.type == "cuda":
            max_batch = MAX_AUTO_CUDA_BATCH_SIZE
        else:
            max_batch = cpu_batch_size(model, input_shape, options, probe)
    batch = min(batch, max_batch)
    if batch >= 8:
        batch -= batch % 8
    if device.type == "cuda":
        model = model.to(device).eval()
        opts = options or EngineOptions()
        batch = fit_measured_batch(batch, budget, lambda b: cuda_batch_peak(model, input_shape, device, opts, b))
    return int(batch)


def cuda_batch_size(bytes_per_sample: int, free_bytes: int) -> int:
    """The CUDA default batch for a measured ``bytes_per_sample``: the largest power of two up to
    MAX_CUDA_BATCH_SIZE whose memory fits in CUDA_BATCH_BYTES and in CUDA_BATCH_FRACTION of
    ``free_bytes`` (at least 1; whether one sample fits is cost.check_memory's question)."""
    budget = min(CUDA_BATCH_BYTES, int(CUDA_BATCH_FRACTION * max(0, int(free_bytes))))
    fit = max(1, budget // max(1, int(bytes_per_sample)))
    return int(min(MAX_CUDA_BATCH_SIZE, 1 << (fit.bit_length() - 1)))


def default_batch_size(
    device: torch.device,
    model: nn.Module | None = None,
    input_shape: tuple[int, ...] | None = None,
    options: EngineOptions | None = None,
    probe: MemoryProbe | None = None,
) -> int:
    """Samples per forward pass when none is given: ``cuda_batch_size`` of the measured memory
    and the free memory on CUDA, ``cpu_batch_size`` on a CPU (``probe``: a measurement already
    made for this model and options).

    Without a model (nothing to measure) CUDA gets MAX_CUDA_BATCH_SIZE and a CPU
    MIN_CPU_BATCH_SIZE.
    """
    device = torch.device(device)
    if model is None or input_shape is None:
        return MAX_CUDA_BATCH_SIZE if device.type == "cuda" else MIN_CPU_BATCH_SIZE
    shape = tuple(input_shape)
    if device.type == "cuda":
        if probe is None:
            probe = measure_memory_per_sample(model, shape, device, options)
        return cuda_batch_size(probe.bytes_per_sample, available_memory(device))
    return cpu_batch_size(model, shape, options, probe)


def resolve_batch_size(
    options: EngineOptions,
    model: nn.Module,
    input_shape: tuple[int, ...],
    device: torch.device,
) -> int:
    """The batch size ``options`` ask for: an int as given, "auto" measured, None the default."""
    if options.batch_size == "auto":
        return auto_batch_size(model, input_shape, device, options=options)
    if isinstance(options.batch_size, int):
        return options.batch_size
    return default_batch_size(device, model, input_shape, options)


# ---------------------------------------------------------------------------------------------
# The prepared classifier


def autocast_context(options: EngineOptions, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for the fast mode, a no-op context otherwise."""
    if options.autocast is None:
        return contextlib.nullcontext()
    dtype = AUTOCAST_DTYPES[options.autocast]
    try:
        # No weight-cast cache: each weight is used once per forward pass, and CUDA graph capture
        # requires the cache off (torch.cuda.graph documentation).
        return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=False)
    except (RuntimeError, ValueError) as exc:
        raise InvalidArgument(f"autocast {options.autocast} is not supported on {device}: {exc}") from None


def model_memory_format(
    options: EngineOptions, input_shape: tuple[int, ...], device: torch.device
) -> torch.memory_format:
    """channels_last for (C, H, W) inputs when asked (or, by default, on a CPU); else contiguous."""
    wanted = options.channels_last if options.channels_last is not None else device.type == "cpu"
    if wanted and len(input_shape) == 3:
        return torch.channels_last
    return torch.contiguous_format


@dataclass
class Predictor:
    """A base classifier prepared for the engine: maps a noisy batch to int64 labels [B].

    Batches smaller than ``batch_size`` are padded to it when the forward pass has a static
    shape (torch.compile, CUDA graphs), so nothing recompiles or recaptures. ``applied`` records
    which options took effect and why others did not.
    """

    forward: Callable[[Tensor], Tensor]
    batch_size: int
    input_shape: tuple[int, ...]
    device: torch.device
    options: EngineOptions
    memory_format: torch.memory_format
    static_shape: bool
    applied: dict = field(default_factory=dict)
    static_input: Tensor | None = None

    def __call__(self, noisy: Tensor) -> Tensor:
        """Labels (argmax of the logits) of ``noisy``, on the device, without a host sync."""
        m = noisy.shape[0]
        if m > self.batch_size:
            return torch.cat([self(chunk) for chunk in noisy.split(self.batch_size)])
        if self.static_shape and m < self.batch_size:
            padded = self.new_input(self.batch_size)
            padded[:m].copy_(noisy)
            padded[m:].zero_()
            return self.forward(padded)[:m]
        return self.forward(noisy)

    @property
    def thread_safe(self) -> bool:
        """Whether several threads may call it at once: an eager forward, not compiled code or a graph."""
        return not self.static_shape

    def new_input(self, m: int) -> Tensor:
        """An uninitialised input batch of ``m`` samples in the model's memory format.

        With a CUDA graph, a full batch is the graph's own input buffer, so replay copies nothing.
        """
        if self.static_input is not None and m == self.batch_size:
            return self.static_input
        return torch.empty((m, *self.input_shape), device=self.device, memory_format=self.memory_format)


def _compile(model: Callable, applied: dict, **kwargs: object) -> Callable:
    """torch.compile with a fallback to eager (and a warning) when it is unavailable."""
    compile_fn = getattr(torch, "compile", None)
    if compile_fn is None:
        warnings.warn("torch.compile is unavailable in this torch; running eagerly", stacklevel=3)
        applied["compile"] = "unavailable: eager"
        return model
    try:
        compiled = compile_fn(model, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to eager
        warnings.warn(f"torch.compile failed ({exc}); running eagerly", stacklevel=3)
        applied["compile"] = f"failed: {type(exc).__name__}"
        return model
    applied["compile"] = True
    return compiled


def _capture_cuda_graph(
    step: Callable[[Tensor], Tensor], static_in: Tensor, device: torch.device
) -> Callable[[Tensor], Tensor]:
    """Capture ``step`` on a static input buffer in a CUDA graph; returns a replaying forward.

    As torch.cuda.graph requires: warm-up runs on a side stream first (cuDNN/cuBLAS handles and
    algorithm choices are made outside the capture), on ``device`` (not merely the current
    device). Replay reads ``static_in`` and rewrites one output buffer, so a batch written into
    ``static_in`` costs no copy and the labels are cloned before the next replay can overwrite them.
    """
    with torch.cuda.device(device):
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                step(static_in)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = step(static_in)

    def replay(noisy: Tensor) -> Tensor:
        if noisy.data_ptr() != static_in.data_ptr():
            static_in.copy_(noisy)
        graph.replay()
        return static_out.clone()

    return replay


def cuda_precision() -> dict:
    """What "fp32" means on CUDA here: whether cuDNN convolutions and cuBLAS matrix products may
    use TF32 tensor cores (torch's defaults: convolutions yes, matrix products no). Recorded with
    each prepared classifier, since TF32 rounds to 10 mantissa bits."""
    return {"cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32)}


def prepare_model(
    model: nn.Module,
    options: EngineOptions,
    device: torch.device | str,
    example_shape: tuple[int, ...],
) -> Predictor:
    """Prepare ``model`` for the engine: a callable from a noisy batch to argmax labels.

    ``example_shape`` is the shape of one full batch, (batch_size, *input_shape). The model is
    copied before a memory-format change so the caller's model is left as it was. Raises
    InvalidArgument for CUDA graphs on a non-CUDA device or an unsupported autocast.
    """
    device = torch.device(device)
    batch_size, *rest = example_shape
    input_shape = tuple(int(s) for s in rest)
    if options.cuda_graphs and device.type != "cuda":
        raise InvalidArgument(f"cuda_graphs needs a CUDA device, not {device}")
    applied: dict = {"autocast": options.autocast or "fp32"}
    if device.type == "cuda":
        applied["precision"] = cuda_precision()
    fmt = model_memory_format(options, input_shape, device)
    applied["channels_last"] = fmt == torch.channels_last
    if options.channels_last and fmt != torch.channels_last:
        applied["channels_last_note"] = "input is not (C, H, W): contiguous format kept"
    model = model.to(device).eval()
    if fmt == torch.channels_last:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    # Validate autocast support now, not in the middle of a run.
    autocast_context(options, device)

    def step(noisy: Tensor) -> Tensor:
        with torch.inference_mode(), autocast_context(options, device):
            return model(noisy).argmax(1)

    forward: Callable[[Tensor], Tensor] = step
    static_shape = False
    static_input = None
    if options.compile:
        mode = "reduce-overhead" if options.cuda_graphs else None
        compiled_model = _compile(model, applied, dynamic=False, mode=mode)

        def compiled_step(noisy: Tensor) -> Tensor:
            with torch.inference_mode(), autocast_context(options, device):
                return compiled_model(noisy).argmax(1)

        if applied["compile"] is True:
            forward = _checked_compile(compiled_step, step, applied, batch_size, input_shape, device, fmt)
            static_shape = forward is compiled_step
        if options.cuda_graphs:
            applied["cuda_graphs"] = "via torch.compile mode=reduce-overhead" if static_shape else False
    elif options.cuda_graphs:
        static_in = torch.empty((batch_size, *input_shape), device=device, memory_format=fmt).zero_()
        forward = _capture_cuda_graph(step, static_in, device)
        static_shape = True
        static_input = static_in
        applied["cuda_graphs"] = True
    return Predictor(
        forward, int(batch_size), input_shape, device, options, fmt, static_shape, applied, static_input
    )


def _inductor_freezing() -> contextlib.AbstractContextManager:
    """Inductor's freezing for the compilation that happens now: weights become constants, so
    they can be folded and prepacked (oneDNN on a CPU) and convolutions fused with their
    activations. Same fp32 function. A no-op where this torch has no such setting."""
    try:
        from torch._inductor import config as inductor_config

        return inductor_config.patch(freezing=True)
    except (ImportError, AttributeError, RuntimeError):
        return contextlib.nullcontext()


def _checked_compile(
    compiled_step: Callable[[Tensor], Tensor],
    eager_step: Callable[[Tensor], Tensor],
    applied: dict,
    batch_size: int,
    input_shape: tuple[int, ...],
    device: torch.device,
    fmt: torch.memory_format,
) -> Callable[[Tensor], Tensor]:
    """Run the compiled step once (compilation happens here); fall back to eager if it fails."""
    probe = torch.zeros((batch_size, *input_shape), device=device).contiguous(memory_format=fmt)
    try:
        with _inductor_freezing():
            compiled_step(probe)
    except Exception as exc:  # noqa: BLE001 - a backend failure must not end the run
        warnings.warn(f"torch.compile failed at first run ({type(exc).__name__}); running eagerly", stacklevel=3)
        applied["compile"] = f"failed: {type(exc).__name__}"
        return eager_step
    return compiled_step
