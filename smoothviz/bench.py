"""Measurements behind ``smoothviz bench``: the engine against the forward ceiling and the reference loop.

For one model, device and set of input points it measures (medians of repeats after a warm-up,
all workloads run round-robin so a changing load on a shared machine hits them alike):
the base classifier's raw forward throughput at its best batch size (the ceiling: certification
cannot evaluate noisy samples faster than the model classifies them); the reference loop of Cohen
et al. (``reference_loop``); the engine (``certify.sample_counts``) with its default settings and
with each speed option on its own; the time sigma(x) of the kNN design takes per point; and, once
per bench, how many points per second the sound input-dependent radius solver handles at
dimension 3072. Seconds per certified point at n = 100,000 are extrapolated from the measured
throughput: (n0 + n) / (samples per second).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone

import numpy as np
import torch
from torch import Tensor, nn

from smoothviz import bounds
from smoothviz.certify import sample_counts
from smoothviz.cost import plural
from smoothviz.errors import InvalidArgument
from smoothviz.noise import derive_seed
from smoothviz.reference_loop import REFERENCE_BATCH_SIZE, reference_sample_counts
from smoothviz.speed import EngineOptions, Predictor, default_batch_size, prepare_model, resolve_batch_size
from smoothviz.votes import one_torch_thread, sampling_pool, sampling_threads

EXTRAPOLATE_N0 = 100
EXTRAPOLATE_N = 100_000
SOLVER_DIM = 3072
CPU_CEILING_BATCHES = (64, 256, 1024, 4096)
# On CUDA the ceiling tries the engine's batch b and b/8, b/2, 2b around it (1024, 4096, 8192 and
# 16384 for a CIFAR ResNet), so a model whose memory caps its batch (ImageNet) is swept where it fits.
CUDA_CEILING_FACTORS = (1 / 8, 1 / 2, 1, 2)
# Mean and standard deviation of ImageNet's training images per channel (torchvision's models
# are trained on inputs normalised with them); the engine adds noise in [0, 1] pixel space and
# the model normalises inside, as for every dataset here.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SHAPE = (3, 224, 224)
IMAGENET_CLASSES = 1000


def default_ceiling_batches(
    device: torch.device, model: nn.Module | None = None, input_shape: tuple[int, ...] | None = None,
    engine_batch: int | None = None,
) -> tuple[int, ...]:
    """Batch sizes the ceiling tries: small ones suit a CPU's caches, large ones fill a GPU.

    The engine's batch for the model (``engine_batch``, else its default batch size, measured
    when a model is given) is tried too; on CUDA the sweep lies around it (CUDA_CEILING_FACTORS).
    """
    if engine_batch is None:
        has_model = model is not None and input_shape is not None
        engine_batch = default_batch_size(device, model, input_shape) if has_model else None
    if device.type == "cuda":
        base = engine_batch or default_batch_size(device)
        return tuple(sorted({max(1, int(base * f)) for f in CUDA_CEILING_FACTORS}))
    sizes = set(CPU_CEILING_BATCHES)
    if engine_batch is not None:
        sizes.add(int(engine_batch))
    return tuple(sorted(sizes))


@dataclass
class BenchModel:
    """A model to benchmark with the points (in [0, 1]) whose noisy samples it classifies."""

    name: str
    model: nn.Module
    input_shape: tuple[int, ...]
    num_classes: int
    points: Tensor
    sigma: float
    source: str
    train_x: Tensor | None = None
    extra: dict = field(default_factory=dict)


def engine_variants(device: torch.device) -> dict[str, EngineOptions]:
    """The engine's default settings and each speed option on its own.

    The default memory format is channels_last on a CPU and contiguous on CUDA, so the variant
    that flips it is "contiguous" on a CPU and "channels_last" on CUDA.
    """
    variants = {"default": EngineOptions()}
    if device.type == "cuda":
        variants["channels_last"] = EngineOptions(channels_last=True)
    else:
        variants["contiguous"] = EngineOptions(channels_last=False)
    variants["compile"] = EngineOptions(compile=True)
    variants["fast-bf16"] = EngineOptions(autocast="bf16")
    if device.type == "cuda":
        # fp16 has no fast CPU kernels (about 25x slower than fp32 on the dev CPU), so CPU skips it
        variants["fast-fp16"] = EngineOptions(autocast="fp16")
        variants["cuda-graphs"] = EngineOptions(cuda_graphs=True)
    variants["batch-auto"] = EngineOptions(batch_size="auto")
    return variants


VARIANT_NAMES = ("default", "contiguous", "channels_last", "compile", "fast-bf16", "fast-fp16", "cuda-graphs",
                 "batch-auto")


def variant_options(name: str) -> EngineOptions:
    """The options of a variant named on the command line (any device's).

    Names joined by ``+`` combine their options (``fast-fp16+channels_last+cuda-graphs``); two
    names that set the same option differently are refused.
    """
    table = {**engine_variants(torch.device("cpu")), **engine_variants(torch.device("cuda"))}
    default = EngineOptions()
    combined: dict[str, object] = {}
    for part in (p.strip() for p in name.split("+")):
        if part not in table:
            raise InvalidArgument(f"--variants: unknown {part!r}; choose from {', '.join(VARIANT_NAMES)} "
                                  "(or several joined by '+')")
        for f in fields(EngineOptions):
            value = getattr(table[part], f.name)
            if value == getattr(default, f.name):
                continue
            if f.name in combined and combined[f.name] != value:
                raise InvalidArgument(f"--variants: {name!r} sets {f.name} twice ({combined[f.name]!r} and {value!r})")
            combined[f.name] = value
    return replace(default, **combined)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock times mean what they say."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Task:
    """One timed workload: ``fn`` classifies ``samples`` noisy inputs; ``info`` goes into the JSON."""

    key: str
    fn: Callable[[], object]
    samples: int
    info: dict = field(default_factory=dict)


def measure(
    tasks: Sequence[Task], device: torch.device, repeats: int, warmup: int = 1, deadline: float | None = None,
) -> dict[str, dict]:
    """Samples per second of each task: median over ``repeats`` rounds after ``warmup`` rounds.

    The tasks run round-robin (one of each per round), so a load that changes during the bench
    (a shared CPU) affects all of them alike and their ratios stay meaningful. Besides wall time,
    the process's CPU time is recorded: with one thread on a shared CPU, samples per CPU-second
    is close to what an idle machine gives. ``deadline`` (a ``time.perf_counter()`` value): no
    round starts that would, at the last round's pace, end after it, once one round has been
    timed; ``rounds`` says how many were.
    """
    wall: dict[str, list[float]] = {t.key: [] for t in tasks}
    cpu: dict[str, list[float]] = {t.key: [] for t in tasks}
    last_round = 0.0
    for round_ in range(warmup + repeats):
        started = time.perf_counter()
        if deadline is not None and round_ > warmup and started + last_round > deadline:
            break
        for task in tasks:
            synchronize(device)
            w0, c0 = time.perf_counter(), time.process_time()
            task.fn()
            synchronize(device)
            if round_ >= warmup:
                wall[task.key].append(time.perf_counter() - w0)
                cpu[task.key].append(time.process_time() - c0)
        last_round = time.perf_counter() - started
    out = {}
    for task in tasks:
        med_wall = statistics.median(wall[task.key])
        med_cpu = statistics.median(cpu[task.key])
        out[task.key] = {**task.info, "images_per_s": task.samples / med_wall,
                         "images_per_cpu_s": task.samples / med_cpu if med_cpu > 0 else math.inf,
                         "rounds": len(wall[task.key]),
                         "seconds": [round(v, 6) for v in wall[task.key]],
                         "cpu_seconds": [round(v, 6) for v in cpu[task.key]]}
    return out


def seconds_per_point(samples_per_s: float, n0: int = EXTRAPOLATE_N0, n: int = EXTRAPOLATE_N) -> float:
    """Seconds one CERTIFY (n0 + n samples) takes at a measured throughput (extrapolated)."""
    return (n0 + n) / samples_per_s if samples_per_s > 0 else math.inf


def forward_loop(predictor: Predictor, inputs: Tensor, loops: int, threads: int = 1) -> Callable[[], None]:
    """``loops`` forward passes on ``inputs``; with ``threads`` > 1 they are split across that many
    threads with one torch thread each, as the engine samples on a CPU (votes.count_votes)."""
    if threads <= 1:
        def run() -> None:
            for _ in range(loops):
                predictor(inputs)

        return run
    shares = [loops // threads + (1 if i < loops % threads else 0) for i in range(threads)]
    own_inputs = [inputs] + [inputs.clone() for _ in range(threads - 1)]

    def one(i: int) -> None:
        with torch.inference_mode():
            for _ in range(shares[i]):
                predictor(own_inputs[i])

    def run_threads() -> None:
        with one_torch_thread():
            list(sampling_pool(threads).map(one, range(threads)))

    return run_threads


def ceiling_tasks(
    model: nn.Module, input_shape: tuple[int, ...], device: torch.device, batch_sizes: Sequence[int],
    samples: int,
) -> list[Task]:
    """The fp32 classifier alone on pre-generated inputs, per memory format and batch size.

    The inputs are drawn once (uniform in [0, 1] plus Gaussian noise, already in the memory
    format), so only the forward pass and its argmax are timed: the physical limit of
    certification. Image inputs try both contiguous and channels_last formats. On a CPU with
    several threads, each setting also runs as one forward pass per thread with one torch thread
    each (the engine's way of using the cores), and the best of all counts as the ceiling.
    """
    formats = {"contiguous": False, "channels_last": True} if len(input_shape) == 3 else {"contiguous": False}
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    tasks = []
    for fmt, channels_last in formats.items():
        options = EngineOptions(channels_last=channels_last)
        for bs in batch_sizes:
            predictor = prepare_model(model, options, device, (bs, *input_shape))
            inputs = predictor.new_input(bs)
            shape = (bs, *input_shape)
            inputs.copy_(torch.rand(shape, device=device) + 0.25 * torch.randn(shape, device=device))
            loops = max(1, math.ceil(samples / bs))
            for k in sorted({1, threads}):
                label = fmt if k == 1 else f"{fmt} x{k} threads"
                tasks.append(Task(f"ceiling@{label}@{bs}", forward_loop(predictor, inputs, loops, k), loops * bs,
                                  {"batch_size": int(bs), "format": label, "threads": k}))
    return tasks


def reference_task(
    model: nn.Module, points: Tensor, sigma: float, num: int, num_classes: int, device: torch.device, seed: int = 0,
) -> Task:
    """The reference loop (one point at a time, batches of 1000) over ``points``."""
    model = model.to(device).eval()
    pts = points.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)

    def run() -> None:
        for p in range(pts.shape[0]):
            reference_sample_counts(model, pts[p], sigma, num, num_classes, REFERENCE_BATCH_SIZE, generator)

    return Task("reference", run, pts.shape[0] * num, {"batch_size": REFERENCE_BATCH_SIZE})


def engine_tasks(
    name: str, model: nn.Module, points: Tensor, sigma: float, num: int, num_classes: int,
    device: torch.device, options: EngineOptions, seed: int = 0,
) -> list[Task]:
    """The engine with ``options`` (all points together), and the ceiling with the same options.

    The engine task runs ``certify.sample_counts``; each point's noise is seeded per block
    exactly as in a certification run, so the cost of the engine's reproducible noise is
    included. The second task runs the same prepared classifier at the same batch size on
    pre-generated inputs: the ceiling "with the same options". Preparation (compilation, graph
    capture, the auto batch size probe) happens here, before timing (``prepare_s``).
    """
    t0 = time.perf_counter()
    input_shape = tuple(points.shape[1:])
    batch = resolve_batch_size(options, model, input_shape, device)
    predictor = prepare_model(model, options, device, (batch, *input_shape))
    pts = points.to(device)
    sig = torch.full((pts.shape[0],), float(sigma), device=device)
    generator = torch.Generator(device=device)
    seeds = [derive_seed(seed, p, 1) for p in range(pts.shape[0])]

    def run() -> None:
        sample_counts(predictor, pts, sig, num, num_classes, batch, generator, seeds=seeds)

    run()  # compiles or captures now, so prepare_s holds the one-off cost
    info = {"batch_size": batch, "prepare_s": time.perf_counter() - t0, "options": options.to_dict(),
            "applied": dict(predictor.applied)}
    samples = pts.shape[0] * num
    inputs = predictor.new_input(batch)
    shape = (batch, *input_shape)
    inputs.copy_(torch.rand(shape, device=device) + sigma * torch.randn(shape, device=device))
    loops = max(1, math.ceil(samples / batch))
    threads = sampling_threads(predictor, device, seeded=True)
    info["threads"] = threads
    return [Task(f"engine:{name}", run, samples, info),
            Task(f"ceiling:{name}", forward_loop(predictor, inputs, loops, threads), loops * batch,
                 {"batch_size": batch, "threads": threads})]


def knn_sigma_seconds(train_x: Tensor, points: Tensor, device: torch.device, k: int = 20, repeats: int = 3) -> dict:
    """Seconds per point of sigma(x) for the kNN design against the whole training set.

    ``m`` is fixed (0) so the one-off mean over the training set is not part of the timing.
    """
    from smoothviz.sigma import KNN

    sigma_fn = KNN(train_x, sigma_b=0.25, r=0.01, k=k, m=0.0, device=device)
    pts = points.to(device)
    timed = measure([Task("knn", lambda: sigma_fn(pts), pts.shape[0])], device, repeats)["knn"]
    return {"seconds_per_point": 1.0 / timed["images_per_s"], "train_points": int(train_x.shape[0]), "k": k}


KNN_SYNTHETIC_DIM = 3072  # CIFAR-10's input dimension


def knn_synthetic_timing(
    train_points: int, test_points: int, device: torch.device, dim: int = KNN_SYNTHETIC_DIM, k: int = 20,
    repeats: int = 3, seed: int = 0,
) -> dict:
    """sigma(x) of the kNN design for ``test_points`` inputs against ``train_points`` synthetic
    training inputs of dimension ``dim`` (uniform in [0, 1], drawn on ``device``).

    Times one call on all test points (median of ``repeats`` after a warm-up) with ``m`` fixed,
    and, once, the training set's mean kNN distance with each point excluding itself: the
    default ``m`` a kNN sigma function computes when it is built.
    """
    from smoothviz.sigma import KNN

    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    train = torch.rand((train_points, dim), generator=generator, device=device)
    test = torch.rand((test_points, dim), generator=generator, device=device)
    sigma_fn = KNN(train, sigma_b=0.25, r=0.01, k=k, m=0.0, device=device)
    timed = measure([Task("knn", lambda: sigma_fn(test), test_points)], device, repeats)["knn"]
    synchronize(device)
    t0 = time.perf_counter()
    sigma_fn.training_mean_distance()
    synchronize(device)
    training_mean_s = time.perf_counter() - t0
    return {"device": str(device), "train_points": train_points, "test_points": test_points, "dim": dim, "k": k,
            "seconds": test_points / timed["images_per_s"], "seconds_per_point": 1.0 / timed["images_per_s"],
            "rounds": timed["rounds"], "chunk_size": sigma_fn.chunk_size,
            "training_mean_seconds": training_mean_s}


RANDOM_ARCHS = ("resnet110", "resnet20", "resnet50")


def random_workload(arch: str, points: int, seed: int = 0) -> BenchModel:
    """A model with random weights and ``points`` uniform inputs of its dataset's shape.

    resnet110 / resnet20: the CIFAR ResNets of Cohen et al.'s code (3 x 32 x 32, 10 classes,
    CIFAR-10's normalisation inside). resnet50: torchvision's ImageNet ResNet-50 (3 x 224 x 224,
    1000 classes) behind ImageNet's normalisation. Weights are drawn under a forked RNG, so the
    caller's random state is left alone. Speed does not depend on the weights' values.
    """
    from smoothviz.data import DATASET_INFO
    from smoothviz.models import Normalize, build_model

    if arch not in RANDOM_ARCHS:
        raise InvalidArgument(f"--model {arch!r}: random-weight models are {', '.join(RANDOM_ARCHS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "resnet50":
            import torchvision

            shape, classes = IMAGENET_SHAPE, IMAGENET_CLASSES
            net = torchvision.models.resnet50(weights=None, num_classes=classes)
            model = nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD, shape), net)
            dataset = "imagenet (shape only)"
        else:
            info = DATASET_INFO["cifar10"]
            shape, classes = tuple(info.input_shape), info.num_classes
            model = build_model(arch, shape, classes, info.mean, info.std)
            dataset = "cifar10 (shape only)"
    x = torch.rand((points, *shape), generator=torch.Generator().manual_seed(seed))
    return BenchModel(
        name=f"{dataset.split()[0]}-shape {arch}", model=model.eval(), input_shape=shape, num_classes=classes,
        points=x, sigma=0.25, source="random weights", extra={"dataset": dataset, "arch": arch},
    )


def radius_solver_rate(points: int = 1000, dim: int = SOLVER_DIM, repeats: int = 3, seed: int = 0) -> dict:
    """Points per second of ``bounds.input_dependent_radius`` on one batch at dimension ``dim``.

    p_A spreads over (0.55, 0.9999), sigma0 over (0.12, 0.5) and r over (0, 0.05], as a run of an
    input-dependent model would give.
    """
    rng = np.random.default_rng(seed)
    p_a = rng.uniform(0.55, 0.9999, points)
    sigma0 = rng.uniform(0.12, 0.5, points)
    r = rng.uniform(0.0, 0.05, points)
    task = Task("solver", lambda: bounds.input_dependent_radius(p_a, sigma0, r, dim), points)
    timed = measure([task], torch.device("cpu"), repeats)["solver"]
    return {"points_per_s": timed["images_per_s"], "points": points, "dim": dim}


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on."""
    info = {
        "device": str(device), "torch": torch.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "processor": _cpu_model(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({
            "gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "capability": list(torch.cuda.get_device_capability(device)),
            "gpu_memory_bytes": int(props.total_memory), "multiprocessors": int(props.multi_processor_count),
        })
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def planned_samples(
    bm: BenchModel, device: torch.device, n: int, repeats: int, variants: dict[str, EngineOptions],
    ceiling_batches: Sequence[int] | None = None,
) -> int:
    """Noisy samples ``bench_model`` will classify for ``bm`` (all tasks, warm-up round included).

    Per round: each ceiling setting (memory format x batch size x threading), the reference loop,
    and per engine variant the engine and its own ceiling, each about ``points * n`` samples;
    plus one untimed engine call per variant while it is prepared.
    """
    samples = bm.points.shape[0] * n
    batches = ceiling_batches or default_ceiling_batches(device, bm.model, bm.input_shape)
    formats = 2 if len(bm.input_shape) == 3 else 1
    threadings = len({1, torch.get_num_threads()}) if device.type == "cpu" else 1
    ceiling = sum(max(1, math.ceil(samples / b)) * b for b in batches) * formats * threadings
    per_round = ceiling + samples + 2 * len(variants) * samples
    return (1 + repeats) * per_round + len(variants) * samples


def bench_model(
    bm: BenchModel, device: torch.device, n: int, repeats: int,
    variants: dict[str, EngineOptions], ceiling_batches: Sequence[int] | None = None,
    knn: bool = True, log: Callable[[str], None] | None = None, deadline: float | None = None,
) -> dict:
    """All per-model measurements: ceiling, reference loop, engine variants, kNN sigma time.

    ``deadline`` (a ``time.perf_counter()`` value) bounds the time: once half of it is spent,
    the remaining variants are not prepared (listed with the reason), and the timed rounds stop
    when the next would end after it (``measure``).
    """
    say = log or (lambda _msg: None)
    samples = bm.points.shape[0] * n
    started = time.perf_counter()
    prepare_until = None if deadline is None else started + 0.5 * (deadline - started)
    say(f"{bm.name}: preparing")
    batches = ceiling_batches or default_ceiling_batches(device, bm.model, bm.input_shape)
    tasks = ceiling_tasks(bm.model, bm.input_shape, device, batches, samples)
    tasks.append(reference_task(bm.model, bm.points, bm.sigma, n, bm.num_classes, device))
    engine: dict[str, dict] = {}
    for name, options in variants.items():
        if prepare_until is not None and time.perf_counter() > prepare_until:
            engine[name] = {"error": f"skipped: half of the time budget ({deadline - started:.0f} s) was spent "
                                     "preparing the variants before it", "options": options.to_dict()}
            continue
        try:
            tasks += engine_tasks(name, bm.model, bm.points, bm.sigma, n, bm.num_classes, device, options)
        except InvalidArgument as exc:
            engine[name] = {"error": str(exc), "options": options.to_dict()}
    say(f"{bm.name}: timing {len(tasks)} workloads x {repeats} rounds")
    timed = measure(tasks, device, repeats, deadline=deadline)
    sweep = {k.split("@", 1)[1]: v for k, v in timed.items() if k.startswith("ceiling@")}
    best = max(sweep, key=lambda k: sweep[k]["images_per_s"])
    ceiling = {**sweep[best], "best_batch": sweep[best]["batch_size"], "best_format": sweep[best]["format"],
               "by_batch": {k: v["images_per_s"] for k, v in sweep.items()},
               "by_batch_cpu": {k: v["images_per_cpu_s"] for k, v in sweep.items()},
               "best_images_per_cpu_s": max(v["images_per_cpu_s"] for v in sweep.values())}
    reference = timed["reference"]
    for row in (ceiling, reference):
        row["seconds_per_point_n100k"] = seconds_per_point(row["images_per_s"])
    for name in variants:
        if name in engine:
            continue
        row = timed[f"engine:{name}"]
        row["vs_reference"] = row["images_per_s"] / reference["images_per_s"]
        row["vs_ceiling"] = row["images_per_s"] / ceiling["images_per_s"]
        row["vs_reference_cpu"] = row["images_per_cpu_s"] / reference["images_per_cpu_s"]
        row["vs_ceiling_cpu"] = row["images_per_cpu_s"] / ceiling["best_images_per_cpu_s"]
        row["seconds_per_point_n100k"] = seconds_per_point(row["images_per_s"])
        own = timed[f"ceiling:{name}"]
        row["ceiling_same_options"] = own["images_per_s"]
        row["vs_ceiling_same_options"] = row["images_per_s"] / own["images_per_s"]
        engine[name] = row
    engine = {name: engine[name] for name in variants}
    own_ceilings = {name: row["ceiling_same_options"] for name, row in engine.items() if "ceiling_same_options" in row}
    best_name = max(own_ceilings, key=own_ceilings.__getitem__, default=None)
    if best_name is not None and own_ceilings[best_name] > ceiling["images_per_s"]:
        ceiling["best_over_options"] = {"images_per_s": own_ceilings[best_name], "variant": best_name}
    else:
        ceiling["best_over_options"] = {"images_per_s": ceiling["images_per_s"], "variant": "default sweep"}
    out = {
        "name": bm.name, "source": bm.source, "input_shape": list(bm.input_shape),
        "num_classes": bm.num_classes, "sigma": bm.sigma, "points": int(bm.points.shape[0]), "n": n,
        "ceiling": ceiling, "reference": reference, "engine": engine, **bm.extra,
    }
    if knn and bm.train_x is not None:
        say(f"{bm.name}: kNN sigma")
        out["knn_sigma"] = knn_sigma_seconds(bm.train_x, bm.points, device, repeats=repeats)
        default = engine.get("default", {})
        if "images_per_s" in default:
            out["knn_sigma"]["fraction_of_certify_time_n100k"] = (
                out["knn_sigma"]["seconds_per_point"] / default["seconds_per_point_n100k"]
            )
    return out


def run_bench(
    models: Sequence[BenchModel], device: torch.device, n: int, repeats: int = 3,
    variants: dict[str, EngineOptions] | None = None, ceiling_batches: Sequence[int] | None = None,
    knn: bool = True, solver_points: int = 1000, log: Callable[[str], None] | None = None,
    command: str = "", budget_s: float | None = None,
) -> dict:
    """The whole benchmark as a JSON-able dict (``format_table`` prints it).

    ``budget_s``: seconds the models may take together, shared equally among those not yet
    measured (see ``bench_model``'s deadline); None: no limit.
    """
    variants = engine_variants(device) if variants is None else variants
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    deadline = None if budget_s is None else time.perf_counter() + float(budget_s)
    measured = []
    for i, bm in enumerate(models):
        share = None if deadline is None else time.perf_counter() + (deadline - time.perf_counter()) / (len(models) - i)
        measured.append(bench_model(bm, device, n, repeats, variants, ceiling_batches, knn, log, share))
    result = {
        "created": created, "command": command, "machine": machine_info(device),
        "settings": {"n": n, "repeats": repeats, "budget_s": budget_s,
                     "ceiling_batches": list(ceiling_batches or default_ceiling_batches(device)),
                     "extrapolated_to": {"n0": EXTRAPOLATE_N0, "n": EXTRAPOLATE_N}},
        "notes": [
            "throughput in noisy samples (images) per second, median of repeats after a warm-up",
            f"seconds per point at n={EXTRAPOLATE_N:,} are extrapolated: (n0 + n) / throughput with n0={EXTRAPOLATE_N0}",
            "fast-bf16 / fast-fp16 certify the classifier as evaluated under autocast, not the fp32 model",
        ],
        "models": measured,
    }
    if solver_points > 0:
        if log:
            log("input-dependent radius solver")
        result["radius_solver"] = radius_solver_rate(solver_points, SOLVER_DIM, repeats)
    return result


def run_knn_synthetic(
    train_points: int, test_points: int, device: torch.device, repeats: int = 3, command: str = "",
) -> dict:
    """``knn_synthetic_timing`` in the envelope of ``run_bench`` (no models), for ``format_table``."""
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
        "machine": machine_info(device), "settings": {"repeats": repeats},
        "notes": [("kNN sigma(x) on synthetic uniform data: one call on all test points, median of repeats "
                   "after a warm-up; the training mean (default m) once")],
        "models": [], "knn_synthetic": knn_synthetic_timing(train_points, test_points, device, repeats=repeats),
    }


# The GPU goals of the engine (H200, n = 100,000): seconds per point, ratios.
GOAL_CIFAR_FP32_S = 1.0
GOAL_CIFAR_FAST_S = 0.3
GOAL_VS_REFERENCE = 5.0
GOAL_VS_OWN_CEILING = 0.9
GOAL_IMAGENET_FAST_S = 10.0


def _measured(mod: dict, fast: bool) -> dict[str, dict]:
    """The engine variants of a bench model that were measured, in fp32 or in a fast mode."""
    return {name: row for name, row in mod.get("engine", {}).items()
            if "images_per_s" in row and (row["options"].get("autocast") is not None) == fast}


def _goal(goal: str, value: float | None, target: float | None, at_most: bool, detail: str) -> dict:
    """One row of ``speed_goals``: met is None where nothing was measured or there is no target."""
    met = None if value is None or target is None else (value <= target if at_most else value >= target)
    return {"goal": goal, "value": value, "target": target, "met": met, "detail": detail}


def _best(rows: dict[str, dict], key: str, lowest: bool) -> tuple[str | None, float | None]:
    if not rows:
        return None, None
    name = (min if lowest else max)(rows, key=lambda k: rows[k][key])
    return name, float(rows[name][key])


def speed_goals(cifar: dict | None, imagenet: dict | None) -> list[dict]:
    """The engine's GPU goals against bench results (one model entry of ``run_bench`` each).

    CIFAR-10 ResNet-110: seconds per point at n = 100,000 in fp32/tf32 (best non-autocast variant)
    and in the fast mode (best autocast variant); the best fp32 variant against the reference
    loop; every measured variant against the forward ceiling with its own options (the lowest
    counts); the best ceiling over all options, for the record. ImageNet ResNet-50: the fast
    mode's seconds per point. A goal whose model or variants were not measured has met None.
    """
    rows: list[dict] = []
    missing = "not measured"
    if cifar is None:
        rows += [_goal(g, None, t, a, missing) for g, t, a in (
            ("CIFAR-10 ResNet-110 fp32/tf32 s/point (n=1e5)", GOAL_CIFAR_FP32_S, True),
            ("CIFAR-10 ResNet-110 fast mode s/point (n=1e5)", GOAL_CIFAR_FAST_S, True),
            ("CIFAR-10 ResNet-110 engine vs reference loop", GOAL_VS_REFERENCE, False),
            ("CIFAR-10 ResNet-110 engine vs its own ceiling", GOAL_VS_OWN_CEILING, False))]
    else:
        fp32, fast = _measured(cifar, False), _measured(cifar, True)
        default = cifar.get("engine", {}).get("default", {})
        name, value = _best(fp32, "seconds_per_point_n100k", lowest=True)
        shown = f"default {default['seconds_per_point_n100k']:.3g}" if "seconds_per_point_n100k" in default else missing
        rows.append(_goal("CIFAR-10 ResNet-110 fp32/tf32 s/point (n=1e5)", value, GOAL_CIFAR_FP32_S, True,
                          f"best: {name}; {shown}" if name else missing))
        name, value = _best(fast, "seconds_per_point_n100k", lowest=True)
        rows.append(_goal("CIFAR-10 ResNet-110 fast mode s/point (n=1e5)", value, GOAL_CIFAR_FAST_S, True,
                          f"best: {name}" if name else missing))
        name, value = _best(fp32, "vs_reference", lowest=False)
        shown = f"default {default['vs_reference']:.3g}x" if "vs_reference" in default else missing
        rows.append(_goal("CIFAR-10 ResNet-110 engine vs reference loop", value, GOAL_VS_REFERENCE, False,
                          f"best fp32: {name}; {shown}" if name else missing))
        name, value = _best({**fp32, **fast}, "vs_ceiling_same_options", lowest=True)
        rows.append(_goal("CIFAR-10 ResNet-110 engine vs its own ceiling", value, GOAL_VS_OWN_CEILING, False,
                          f"lowest: {name}" if name else missing))
        best = cifar.get("ceiling", {}).get("best_over_options")
        if best:
            rows.append(_goal("CIFAR-10 ResNet-110 best ceiling over all options, s/point",
                              seconds_per_point(best["images_per_s"]), None, True,
                              f"{best['images_per_s']:,.0f} images/s ({best['variant']})"))
    if imagenet is None:
        rows.append(_goal("ImageNet ResNet-50 fast mode s/point (n=1e5)", None, GOAL_IMAGENET_FAST_S, True, missing))
    else:
        name, value = _best(_measured(imagenet, True), "seconds_per_point_n100k", lowest=True)
        rows.append(_goal("ImageNet ResNet-50 fast mode s/point (n=1e5)", value, GOAL_IMAGENET_FAST_S, True,
                          f"best: {name}" if name else missing))
    return rows


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def format_table(result: dict) -> str:
    """A plain-text table of a ``run_bench`` result, one block per model.

    Columns: samples per wall-clock second and per CPU-second (the latter is the better guide on
    a shared CPU when one thread is used), each with its ratio to the reference loop and to the
    ceiling; seconds per certified point at n = 100,000 (extrapolated); batch size.
    """
    lines = []
    m = result["machine"]
    lines.append(f"device {m['device']} ({m.get('gpu') or m['processor']}), torch {m['torch']}, "
                 f"{m['threads']} threads")
    for mod in result["models"]:
        width = max(24, *(len(f"engine {name}") + 1 for name in mod["engine"]))  # labels of combined variants
        lines.append("")
        lines.append(f"{mod['name']}  [{mod['source']}]  input {tuple(mod['input_shape'])}, "
                     f"{plural(mod['points'], 'point')} x n={mod['n']:,}")
        lines.append(f"{'':{width}}{'images/s':>10}{'vs ref':>8}{'vs ceil':>8}{'vs own':>8}{'img/cpu-s':>11}"
                     f"{'vs ref':>8}{'vs ceil':>8}{'s/pt n=1e5':>12}  batch")
        ceil, ref = mod["ceiling"], mod["reference"]
        cpu_ceil = ceil["best_images_per_cpu_s"]

        def line(label: str, row: dict, batch: object, note: str = "", width: int = width) -> str:
            own = row.get("vs_ceiling_same_options")
            return (f"{label:{width}}{_fmt_rate(row['images_per_s']):>10}"
                    f"{row['images_per_s'] / ref['images_per_s']:>8.2f}"
                    f"{row['images_per_s'] / ceil['images_per_s']:>8.2f}"
                    f"{'-' if own is None else format(own, '.2f'):>8}"
                    f"{_fmt_rate(row['images_per_cpu_s']):>11}"
                    f"{row['images_per_cpu_s'] / ref['images_per_cpu_s']:>8.2f}"
                    f"{row['images_per_cpu_s'] / cpu_ceil:>8.2f}"
                    f"{row['seconds_per_point_n100k']:>12.3g}  {batch}{note}")

        lines.append(line("ceiling (forward only)", ceil, f"{ceil['best_batch']} {ceil['best_format']}"))
        lines.append(line("reference loop", ref, ref["batch_size"]))
        for name, row in mod["engine"].items():
            label = f"engine {name}"
            if "error" in row:
                lines.append(f"{label:{width}}  n/a: {row['error']}")
                continue
            note = ""
            if row["applied"].get("compile") not in (None, True):
                note = f"  ({row['applied']['compile']})"
            threads = row.get("threads", 1)
            batch = row["batch_size"] if threads == 1 else f"{row['batch_size']} x{threads} threads"
            lines.append(line(label, row, batch, note))
        rounds = [row["rounds"] for row in (ceil, ref, *mod["engine"].values()) if "rounds" in row]
        wanted = result.get("settings", {}).get("repeats")
        if rounds and wanted and min(rounds) < wanted:
            lines.append(f"timed rounds: {min(rounds)} of {wanted} (the time budget ended them)")
        by_batch = ", ".join(f"{k.replace('@', ' ')}: {v:,.0f}" for k, v in ceil["by_batch"].items())
        lines.append(f"ceiling (fp32) by format, threading and batch size, images/s: {by_batch}")
        best = ceil["best_over_options"]
        lines.append(f"best ceiling over all options: {best['images_per_s']:,.0f} images/s ({best['variant']})")
        estimate, default = mod.get("estimate_rate"), mod["engine"].get("default", {})
        if estimate and "images_per_s" in default:
            lines.append(f"rate behind the time estimates: {estimate['samples_per_s']:,.0f} samples/s "
                         f"({estimate['source']}), {estimate['samples_per_s'] / default['images_per_s']:.2f}x "
                         "the engine default measured here")
        if "knn_sigma" in mod:
            k = mod["knn_sigma"]
            frac = k.get("fraction_of_certify_time_n100k")
            frac_text = f" ({frac:.2e} of a certification at n=1e5)" if frac is not None else ""
            lines.append(f"kNN sigma(x): {k['seconds_per_point'] * 1e3:.3g} ms/point against "
                         f"{k['train_points']:,} training points{frac_text}")
    if "knn_synthetic" in result:
        k = result["knn_synthetic"]
        lines.append("")
        lines.append(f"kNN sigma(x), synthetic: {k['test_points']:,} points against {k['train_points']:,} x "
                     f"{k['dim']:,} training inputs (k={k['k']}) in {k['seconds']:.3g} s "
                     f"({k['seconds_per_point'] * 1e3:.3g} ms/point); the training mean (default m) "
                     f"{k['training_mean_seconds']:.3g} s")
    if "radius_solver" in result:
        s = result["radius_solver"]
        lines.append("")
        lines.append(f"input-dependent radius solver: {s['points_per_s']:,.0f} points/s at dimension {s['dim']}")
    if not result["models"]:
        return "\n".join(lines)
    lines.append("")
    lines.append("vs ceil: against the fp32 forward at its best memory format, batch size and threading; vs own: "
                 "against the forward with the same options, batch size and threading")
    lines.append("on a CPU the engine (and 'x2 threads' etc. in the ceiling sweep) runs one forward pass per "
                 "thread with one torch thread each; the reference loop uses all threads in each forward pass")
    lines.append(f"s/pt n=1e5: extrapolated from the wall-clock throughput, (n0={EXTRAPOLATE_N0} + "
                 f"n={EXTRAPOLATE_N:,}) / images/s")
    return "\n".join(lines)
