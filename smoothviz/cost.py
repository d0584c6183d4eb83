"""What a job may ask for and what it will cost, known before it starts.

A certification costs ``points * (n0 + n)`` noisy samples, each a forward pass of the base
classifier; training costs ``epochs * ceil(train points / batch)`` optimisation steps. This
module estimates both from a measured rate (samples or steps per second on this machine), checks
that a batch fits in free memory, and holds the limits every entry point shares: the seed range,
the largest input a checkpoint may declare, and the durations above which a job is flagged
(``LONG_JOB_SECONDS``) or refused unless asked for explicitly (``REFUSE_WITHOUT_FLAG_SECONDS``).

Rates are kept in a small JSON file next to the results store (``rates_file``), keyed by the
checkpoint's SHA-256, the device, the batch size and the engine options: ``bench`` and finished
``certify`` runs record them, and an estimate uses a recorded rate when one exists, else measures
a few batches (well under a second for the shipped models). Estimating never certifies anything
and never writes the store or the rates file.

Only the standard library is imported at module level, so argument definitions can use the limits
without loading torch.
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from smoothviz.errors import InvalidArgument
from smoothviz.text import plural

if TYPE_CHECKING:
    import torch

    from smoothviz.certify import EngineClassifier

# A dashboard warns before starting a job longer than this (seconds).
LONG_JOB_SECONDS = 300.0
# The CLI refuses a job longer than this (a day) unless --allow-long is given.
REFUSE_WITHOUT_FLAG_SECONDS = 86_400.0
# Seeds are integers in [0, SEED_MAX]: every generator and the store's INTEGER column take them.
SEED_MAX = 2**32 - 1
# At most this many samples per point (n0 or n): the engine lists a point's noise blocks up front
# (n / 1024 of them, about 100 MB at this n), and at 10,000 samples/s one point already takes a day.
N_MAX = 10**9
# The largest input (values per sample) a checkpoint may declare: an ImageNet image, 3 x 224 x 224,
# the largest this project speaks of; the registered datasets stay far below (CIFAR-10: 3,072).
MAX_INPUT_ELEMENTS = 3 * 224 * 224
# Checkpoint files above this size are not read (the shipped ones are below 1 MiB, ResNet-110 7 MiB).
MAX_CHECKPOINT_BYTES = 2**31
# A batch may use at most this fraction of the free device memory.
MEMORY_FRACTION = 0.8
# How long a rate measurement samples after its warm-up batch (seconds).
MEASURE_SECONDS = 0.25
# A certify session records its rate only after sampling at least this long (a stable figure).
MIN_RECORD_SECONDS = 2.0
_MAX_RECORDS = 500
_RATES_VERSION = 1


def duration_text(seconds: float) -> str:
    """A rounded duration for people: ``under a second``, ``about 40 s``, ``about 3 min``,
    ``about 2.5 h``, ``about 3.2 days``, ``about 1,600 years``."""
    if not math.isfinite(seconds):
        return "forever"
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 90 * 60:
        return f"about {seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"about {seconds / 3600:.1f} h"
    if seconds < 730 * 86_400:
        return f"about {seconds / 86_400:.1f} days"
    return f"about {seconds / (365.25 * 86_400):,.0f} years"


def rate_text(per_second: float) -> str:
    """``21,000`` or, below 100, three significant digits (``2.5``)."""
    return f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:.3g}"


def bytes_text(count: float) -> str:
    """``512 MiB``, ``3.2 GiB``, ``4.1 TiB``."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count:.0f} B"


def check_seed(seed: int, what: str = "--seed") -> int:
    """``seed`` as an int in [0, SEED_MAX], else InvalidArgument naming ``what``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise InvalidArgument(f"{what} {seed}: a seed is an integer from 0 to {SEED_MAX}")
    return seed


@dataclass(frozen=True)
class Rate:
    """Noisy samples per second of noise + forward pass, and where the figure comes from."""

    samples_per_second: float
    source: str


@dataclass(frozen=True)
class Estimate:
    """How long a job should take: ``seconds`` and a sentence saying how that was reckoned."""

    seconds: float
    text: str

    @property
    def long(self) -> bool:
        """Longer than LONG_JOB_SECONDS (worth a warning before starting)."""
        return self.seconds > LONG_JOB_SECONDS

    @property
    def needs_flag(self) -> bool:
        """Longer than REFUSE_WITHOUT_FLAG_SECONDS (the CLI refuses it without --allow-long)."""
        return self.seconds > REFUSE_WITHOUT_FLAG_SECONDS


def estimate_certify(points: int, n0: int, n: int, rate: Rate) -> Estimate:
    """Time to sample ``points * (n0 + n)`` noisy inputs at ``rate`` (n0 = 0 for PREDICT).

    Sampling is the whole cost of a certification that matters at scale: sigma(x), the bounds
    and the store add milliseconds per point (``smoothviz bench`` measures them).
    """
    if points < 0 or n0 < 0 or n < 0:
        raise InvalidArgument(f"estimate_certify: points, n0 and n must be >= 0, got {points}, {n0}, {n}")
    if not rate.samples_per_second > 0:
        raise InvalidArgument(f"estimate_certify: the rate must be > 0, got {rate.samples_per_second}")
    per_point = n0 + n
    seconds = points * per_point / rate.samples_per_second
    text = (f"{duration_text(seconds)} ({plural(points, 'point')} × {plural(per_point, 'sample')} at "
            f"{rate_text(rate.samples_per_second)} samples/s, {rate.source})")
    return Estimate(seconds, text)


def estimate_train(epochs: int, steps_per_epoch: int, batch_size: int, steps_per_second: float,
                   source: str = "measured now") -> Estimate:
    """Time for ``epochs * steps_per_epoch`` optimisation steps at ``steps_per_second``."""
    if epochs < 0 or steps_per_epoch < 0:
        raise InvalidArgument(f"estimate_train: epochs and steps must be >= 0, got {epochs}, {steps_per_epoch}")
    if not steps_per_second > 0:
        raise InvalidArgument(f"estimate_train: the rate must be > 0, got {steps_per_second}")
    seconds = epochs * steps_per_epoch / steps_per_second
    text = (f"{duration_text(seconds)} ({plural(epochs, 'epoch')} × {plural(steps_per_epoch, 'batch', 'batches')}"
            f" of {batch_size:,} at {rate_text(steps_per_second)} batches/s, {source})")
    return Estimate(seconds, text)


def refuse_long(estimate: Estimate, job: str, allow_long: bool, smaller: str) -> None:
    """InvalidArgument when ``estimate`` exceeds a day and ``allow_long`` is false.

    ``smaller`` names the arguments that shrink the job (e.g. ``--n or --points``).
    """
    if estimate.needs_flag and not allow_long:
        raise InvalidArgument(f"{job} would take {estimate.text}, more than a day; add --allow-long "
                              f"to run it anyway, or lower {smaller}")


# ------------------------------------------------------------------------------------- memory


def check_memory(
    input_shape: Sequence[int],
    batch_size: int,
    device: torch.device | str,
    bytes_per_sample: int | None = None,
    threads: int = 1,
    what: str = "--batch-size",
) -> int:
    """Bytes ``threads`` batches of ``batch_size`` need; InvalidArgument when they cannot fit.

    ``bytes_per_sample`` is the measured cost of one sample (``speed.measure_memory_per_sample``:
    noise, noisy input, activations); without it, the noise, noisy input and batch buffer alone
    (three copies of the input) are counted, a lower bound. The limit is MEMORY_FRACTION of the
    memory free on ``device`` now.
    """
    import torch

    from smoothviz.speed import available_memory

    if batch_size < 1 or threads < 1:
        raise InvalidArgument(f"{what} {batch_size}: must be >= 1")
    per_input = math.prod(int(s) for s in input_shape) * 4
    per_sample = int(bytes_per_sample) if bytes_per_sample is not None else 3 * per_input
    need = int(batch_size) * per_sample * int(threads)
    device = torch.device(device)
    free = available_memory(device)
    if need > MEMORY_FRACTION * free:
        across = f" across {threads} sampling threads" if threads > 1 else ""
        raise InvalidArgument(
            f"{what} {batch_size}: a batch needs about {bytes_text(need)} for noise and activations{across}, "
            f"but {device} has {bytes_text(free)} free; use a smaller --batch-size"
        )
    return need


# -------------------------------------------------------------------------------------- rates


def rates_file(db: str | Path | None = None) -> Path:
    """The rates file kept next to the results store ``db`` (default: ``store.default_db()``)."""
    from smoothviz.store import default_db

    path = Path(db) if db is not None else default_db()
    return path.with_name(f"{path.stem}-rates.json")


def device_key(device: torch.device | str) -> str:
    """What a rate depends on besides the model: the CPU and its threads, or the GPU's name."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{device.type}:{torch.get_num_threads()} threads"


def rate_key(checkpoint_sha256: str, device: torch.device | str, batch_size: int, options: Mapping | None) -> str:
    """The cache key of a rate: checkpoint hash, host, device, batch size and engine options."""
    return json.dumps([checkpoint_sha256, socket.gethostname(), device_key(device), int(batch_size),
                       dict(sorted((options or {}).items()))])


def _read_rates(path: Path) -> dict:
    """The recorded rates; a missing or unreadable file is an empty cache (it only saves a measurement)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _RATES_VERSION or not isinstance(data.get("rates"), dict):
        return {}
    return data["rates"]


def recorded_rate(key: str, cache: str | Path | None = None) -> Rate | None:
    """The rate recorded under ``key`` in the rates file ``cache`` (default ``rates_file()``), if any."""
    entry = _read_rates(Path(cache) if cache is not None else rates_file()).get(key)
    if not isinstance(entry, dict):
        return None
    value = entry.get("samples_per_second")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        return None
    day = str(entry.get("recorded", ""))[:10] or "an earlier day"
    return Rate(float(value), f"recorded by {entry.get('by', 'an earlier run')} on {day}")


def record_rate(key: str, samples_per_second: float, by: str, cache: str | Path | None = None) -> bool:
    """Record a measured rate (``by``: e.g. ``bench`` or ``certify run 3``); False if it cannot be written.

    The rates file is a cache, so a folder that cannot be written costs only a measurement later;
    the write is atomic, the newest _MAX_RECORDS entries are kept.
    """
    from smoothviz.outputs import write_output

    if not (samples_per_second > 0 and math.isfinite(samples_per_second)):
        return False
    path = Path(cache) if cache is not None else rates_file()
    rates = _read_rates(path)
    rates.pop(key, None)
    rates[key] = {"samples_per_second": float(samples_per_second), "by": by,
                  "recorded": datetime.now().isoformat(timespec="seconds")}
    kept = dict(list(rates.items())[-_MAX_RECORDS:])
    text = json.dumps({"version": _RATES_VERSION, "rates": kept}, indent=1) + "\n"
    try:
        write_output(path, lambda fh: fh.write(text), what="rates file")
    except InvalidArgument:
        return False
    return True


def measure_rate(
    classify: Callable,
    input_shape: Sequence[int],
    num_classes: int,
    batch_size: int,
    device: torch.device | str,
    seconds: float = MEASURE_SECONDS,
) -> float:
    """Samples per second of the engine's sampling (noise + forward + counting) for ``classify``.

    Warm-up calls first pay the one-off costs (kernel selection, thread pools): a few samples,
    then one full batch, timed; a classifier whose one batch takes longer than ``seconds``, or whose
    threaded call (whole noise blocks on every thread) would take over four times that, is rated by
    that batch. Otherwise the engine's own threaded sampling (``votes.count_votes``, one
    batch per sampling thread per call) runs for at least ``seconds``.
    """
    import torch

    from smoothviz.noise import NOISE_BLOCK
    from smoothviz.votes import count_votes, sampling_threads

    device = torch.device(device)
    shape = tuple(int(s) for s in input_shape)
    x = torch.full((1, *shape), 0.5, device=device)
    sigma = torch.full((1,), 0.25, device=device)
    generator = torch.Generator(device=device)

    def sample(count: int) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            count_votes(classify, x, sigma, [count], num_classes, batch_size, generator, [0])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    sample(min(batch_size, 8))
    one = sample(batch_size)
    threads = sampling_threads(classify, device, seeded=True)
    per_call = threads * NOISE_BLOCK * math.ceil(batch_size / NOISE_BLOCK)
    if one >= seconds or one * per_call / (threads * batch_size) >= 4 * seconds:
        # one call of per_call samples would take far longer than a measurement should
        return batch_size / one
    done, elapsed = 0, 0.0
    while elapsed < seconds:
        elapsed += sample(per_call)
        done += per_call
    return done / elapsed


def engine_rate(
    checkpoint_sha256: str,
    engine: EngineClassifier,
    input_shape: Sequence[int],
    num_classes: int,
    device: torch.device | str,
    options: Mapping | None,
    cache: str | Path | None = None,
) -> tuple[str, Rate]:
    """(rate key, rate) of a prepared engine classifier (``certify.engine_classifier``): the rate
    recorded under its key in ``cache`` when there is one, else ``measure_rate`` now."""
    key = rate_key(checkpoint_sha256, device, engine.batch_size, options)
    rate = recorded_rate(key, cache)
    if rate is None:
        rate = Rate(measure_rate(engine.classify, input_shape, num_classes, engine.batch_size, device), "measured now")
    return key, rate


def sample_rate(
    checkpoint: str | Path,
    device: str = "auto",
    batch_size: int | str | None = None,
    options: dict | None = None,
    cache: str | Path | None = None,
) -> Rate:
    """Samples per second of noise + forward for ``checkpoint`` on ``device`` with these settings.

    A rate recorded for the same checkpoint bytes, machine, device, batch size and options (by
    ``bench`` or an earlier ``certify``) in ``cache`` (default: ``rates_file()``, next to the
    default store) is returned as it is; otherwise a short measurement runs now. Loads the
    checkpoint with every compatibility check (CheckpointError otherwise); writes nothing.
    """
    from smoothviz.certify import engine_classifier
    from smoothviz.device import resolve_device
    from smoothviz.models import load_checkpoint, read_checkpoint
    from smoothviz.store import file_sha256

    dev = resolve_device(device)
    meta = read_checkpoint(checkpoint)["meta"]
    model, meta = load_checkpoint(checkpoint, device=dev, expected_dataset=meta["dataset"])
    shape = tuple(meta["input_shape"])
    engine = engine_classifier(model, options, dev, batch_size, shape)
    return engine_rate(file_sha256(checkpoint) or "", engine, shape, int(meta["num_classes"]), dev, options, cache)[1]


def measure_train_rate(
    step: Callable[[], None],
    seconds: float = MEASURE_SECONDS,
) -> float:
    """Optimisation steps per second of ``step``: one warm-up step (one-off costs), then steps for
    at least ``seconds`` (a single step when one alone takes longer)."""
    step()
    steps, elapsed = 0, 0.0
    while elapsed < seconds:
        t0 = time.perf_counter()
        step()
        elapsed += time.perf_counter() - t0
        steps += 1
    return steps / elapsed
