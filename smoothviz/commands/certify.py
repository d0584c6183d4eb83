"""``smoothviz certify``: CERTIFY test points with a model and sigma(x); results go to the store.

The model is a smoothviz checkpoint, a reference-code checkpoint (Cohen et al. 2019, SmoothAdv,
MACER), a torchvision classifier with local weights, a TorchScript or torch.export archive, or
the user's own code (``--model-code``, which runs it); the data a registered dataset or the
user's files (``imagefolder:PATH``, ``npz:FILE``). See ``smoothviz.model_sources`` and
``smoothviz.data_sources``.

Rerunning the same command resumes the run it created (same configuration, same store) and
certifies only the points still missing; ``--run ID`` executes or resumes a run already in the
store (the dashboard creates runs that way).

Everything is checked before the store is touched (dataset, checkpoint against the data, sigma(x)
on the chosen points, indices, device, options, the memory of a batch and the time the run will
take), so a refused command leaves no run, no row and no new database file behind. Only the
standard library and light smoothviz modules are imported here; the engine loads in ``run``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from smoothviz import cost, launch
from smoothviz.commands._args import add_db_argument, batch_size_arg, open_probability, parse_radii, positive, positive_int, sample_count, seed_arg
from smoothviz.commands._sequential_args import (
    add_sequential_arguments,
    check_sequential,
    print_sequential_summary,
    sequential_config,
)
from smoothviz.device import DEVICE_CHOICES_HELP
from smoothviz.errors import CheckpointError, InvalidArgument

NAME = "certify"
HELP = "Certify test points (CERTIFY of Cohen et al. with constant or input-dependent sigma) into the store."

DEFAULT_N0 = 100
DEFAULT_N = 100_000
DEFAULT_ALPHA = 0.001


def input_shape_arg(text: str) -> tuple[int, ...]:
    """An input shape such as ``3,32,32``: one to three integers >= 1, at most cost.MAX_INPUT_ELEMENTS values."""
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape such as 3,32,32") from None
    if not 1 <= len(shape) <= 3 or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"{text!r}: expected one to three sizes >= 1, such as 3,32,32")
    if math.prod(shape) > cost.MAX_INPUT_ELEMENTS:
        raise argparse.ArgumentTypeError(f"{text!r} has {math.prod(shape):,} values, more than the "
                                         f"{cost.MAX_INPUT_ELEMENTS:,} allowed")
    return shape


def num_classes_arg(text: str) -> int:
    """A number of classes: an integer from 2 to 100,000."""
    value = positive_int(text)
    if not 2 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"{value} is outside 2 to 100,000 classes")
    return value


def value_range_arg(text: str) -> tuple[float, float]:
    """An input range ``LO,HI`` with finite LO < HI."""
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a range LO,HI such as 0,1") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise argparse.ArgumentTypeError(f"{text!r}: expected finite LO < HI")
    return lo, hi


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and what it declares: a file, torchvision:NAME, or the user's code (opt-in)."""
    group = parser.add_argument_group(
        "model", "smoothviz checkpoints record everything; for other models the flags below give what they lack")
    group.add_argument("--model", default=None, metavar="MODEL",
                       help="a smoothviz checkpoint (.pt); a checkpoint of the reference code of Cohen et al. 2019, "
                            "SmoothAdv or MACER (.pth.tar: its architecture is rebuilt, loaded weights-only); "
                            "torchvision:NAME with --weights; or a TorchScript (.pt) / torch.export (.pt2) "
                            "archive with --trust-archive")
    group.add_argument("--weights", default=None, metavar="FILE",
                       help="state dict for torchvision:NAME or --model-code (loaded weights-only: nothing in it runs)")
    group.add_argument("--model-code", default=None, metavar="FILE.py:FUNCTION",
                       help="THIS RUNS YOUR CODE: imports FILE.py and calls FUNCTION() to build the torch.nn.Module "
                            "(then --weights is loaded into it); use it only for code you trust")
    group.add_argument("--trust-archive", action="store_true",
                       help="load a TorchScript or torch.export archive: PyTorch documents that loading one can "
                            "execute code it contains, so pass this only for files you trust")
    group.add_argument("--input-shape", type=input_shape_arg, default=None, metavar="C,H,W",
                       help="the model's input shape, where the model does not declare it")
    group.add_argument("--num-classes", type=num_classes_arg, default=None, metavar="K",
                       help="the model's number of classes, where the model does not declare it")
    group.add_argument("--value-range", type=value_range_arg, default=None, metavar="LO,HI",
                       help="the input range the model expects (default 0,1: noise is added to [0, 1] data)")
    group.add_argument("--trained-sigma", type=positive, default=None, metavar="S",
                       help="the sigma the model was trained with (recorded with the run; the default --sigma)")
    group.add_argument("--normalisation", default=None, metavar="NAME",
                       help="first layer of a reference-code or MACER checkpoint instead of the one its architecture "
                            "implies: cifar10, imagenet, center-cifar10, center-imagenet (SmoothAdv's "
                            "InputCenterLayer) or none")


def add_point_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by certify and predict: data, model, sigma, points, engine, size."""
    parser.add_argument("--dataset", "--data", dest="dataset", default=None, metavar="DATA",
                        help="a registered dataset (digits, cifar10, ...) or your files: imagefolder:PATH (class "
                             "folders of images, ImageFolder layout) or npz:FILE (x in [0, 1], y); resize and "
                             "crop default to the model's, or write imagefolder(resize=256,crop=224):PATH "
                             "(default: the model's dataset)")
    add_model_arguments(parser)
    parser.add_argument("--sigma", default=None,
                        help="sigma function constant:S | knn:SIGMA_B,R,K[,m=M][,min=A][,max=B] | "
                             "ddrs:SIGMA_MIN,SIGMA_MAX,G[,n=N][,alpha=A][,seed=S] (data-dependent: sigma(x) "
                             "optimised per input for the model; naive certificate only, no guarantee) "
                             "(default: the one the model was trained with)")
    parser.add_argument("--sigma-reference", default=None, metavar="SOURCE",
                        help="training points of a knn sigma: imagefolder:PATH or npz:FILE (default: the dataset's "
                             "training split); its statistics are cached by content")
    parser.add_argument("--alpha", type=open_probability, default=DEFAULT_ALPHA,
                        help=f"failure probability in (0, 1) (default {DEFAULT_ALPHA})")
    add_split_arguments(parser, "every N-th point from 0 (the reference code's --skip: --skip 20 gives 500 of 10,000)")
    parser.add_argument("--batch-size", type=batch_size_arg, default=None,
                        help="noisy samples per forward pass, or 'auto' from free device memory "
                             "(default: measured on the model; on CPU the power of two from 256 to 8192 whose activations "
                             "fit in 32 MiB, on CUDA the largest up to 8192 that fits the free memory); "
                             "it never changes the counts")
    parser.add_argument("--seed", type=seed_arg, default=0,
                        help=f"seed from 0 to {cost.SEED_MAX} (each point's noise derives from it and its index)")
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES_HELP)
    parser.add_argument("--allow-long", action="store_true",
                        help="run even when the estimate exceeds a day (otherwise refused)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_speed_arguments(parser)


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine's speed flags (read by ``speed_options``), shared by every verb that creates runs."""
    speedy = parser.add_argument_group("speed options (recorded with the run)")
    fast = speedy.add_mutually_exclusive_group()
    fast.add_argument("--autocast", choices=("bf16", "fp16"), default=None,
                      help="fast mode: evaluate the classifier under autocast; the certificate is then "
                           "for the classifier as evaluated in that precision, not for the fp32 model")
    fast.add_argument("--fast", action="store_const", const="bf16", dest="autocast",
                      help="the fast mode in bf16 (same as --autocast bf16; same caveat)")
    speedy.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="NHWC memory format, same noise draws (default: on for images on CPU)")
    speedy.add_argument("--compile", action="store_true", help="torch.compile the classifier")
    speedy.add_argument("--cuda-graphs", action="store_true", help="replay the forward pass as a CUDA graph")


def speed_options(args: argparse.Namespace) -> dict:
    """The run options the speed flags set (flags left out take the engine's defaults)."""
    from smoothviz.certify import engine_options

    options: dict = {}
    if args.autocast is not None:
        options["autocast"] = args.autocast
    if args.channels_last is not None:
        options["channels_last"] = bool(args.channels_last)
    for key in ("compile", "cuda_graphs"):
        if getattr(args, key):
            options[key] = True
    engine_options(options)
    return options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_point_arguments(parser)
    parser.add_argument("--n0", type=sample_count, default=DEFAULT_N0,
                        help=f"selection samples per point (default {DEFAULT_N0})")
    parser.add_argument("--n", "--num-samples", dest="n", type=sample_count, default=DEFAULT_N,
                        help=f"estimation samples per point, at most {cost.N_MAX:,} (default {DEFAULT_N:,}); "
                             "spell it --num-samples under torchrun, which reads --n as its own --nnodes")
    parser.add_argument("--name", default=None, help="run name (default: checkpoint, sigma and n)")
    add_db_argument(parser)
    parser.add_argument("--run", "--run-id", dest="run", default=None, metavar="RUN",
                        help="execute or resume this run of the store (id or name); other settings are ignored; "
                             "spell it --run-id under torchrun")
    parser.add_argument("--new", action="store_true",
                        help="always create a new run, even when an identical one could be resumed")
    parser.add_argument("--radii", default="0,0.25,0.5,0.75,1.0",
                        help="radii of the summary table (default 0,0.25,0.5,0.75,1.0)")
    add_sequential_arguments(parser)
    launch.add_arguments(parser)


@dataclass(frozen=True)
class Resolved:
    """What the point arguments resolve to: the run's data, sigma, model file and points.

    ``description``: run options describing a foreign model (``model``) and the kNN reference
    (``sigma_reference``), absent for smoothviz checkpoints on their own data; ``trust_code``:
    the user passed --model-code or --trust-archive.
    """

    dataset: str
    sigma_spec: str
    checkpoint: str
    meta: dict
    indices: list[int]
    description: dict = field(default_factory=dict)
    trust_code: bool = False


_DECLARING_FLAGS = ("weights", "input_shape", "num_classes", "value_range", "trained_sigma", "normalisation")


def _model_request(args: argparse.Namespace):
    from smoothviz.model_sources import ModelRequest

    return ModelRequest(
        model=args.model, weights=args.weights, code=args.model_code, trust_archive=bool(args.trust_archive),
        input_shape=args.input_shape, num_classes=args.num_classes, value_range=args.value_range,
        trained_sigma=args.trained_sigma, normalisation=args.normalisation,
    )


def _data_name(text: str, info) -> str:
    """The canonical dataset name for a foreign model: a source takes the model's preprocessing
    and channels where it names none."""
    from smoothviz.data import DATASET_INFO, resolve_name
    from smoothviz.data_sources import is_source, parse_source

    if is_source(text):
        channels = info.input_shape[0] if len(info.input_shape) == 3 else None
        return parse_source(text).with_defaults(info.preprocess, channels).name
    if text not in DATASET_INFO and text == info.dataset:
        raise InvalidArgument(f"--dataset: {info.source} was trained on {text}, which smoothviz does not ship; give "
                              "your copy as --data imagefolder:PATH (ImageFolder layout) or npz:FILE")
    return resolve_name(text)


def _resolve_model(args: argparse.Namespace) -> tuple[str, str | None, str, dict, dict, bool]:
    """(dataset, default sigma spec, checkpoint, meta, description, trust_code) of the model arguments."""
    from smoothviz.data import load_dataset, resolve_name
    from smoothviz.model_sources import check_fits, is_smoothviz_checkpoint, open_model, run_checkpoint, run_record
    from smoothviz.models import read_checkpoint

    if args.model is None and args.model_code is None:
        raise InvalidArgument("--model: a checkpoint is required (or an archive, or torchvision:NAME), or "
                              "--model-code FILE.py:FUNCTION (or --run RUN for certify)")
    request = _model_request(args)
    if request.code is None and is_smoothviz_checkpoint(args.model):
        given = [f for f in _DECLARING_FLAGS if getattr(args, f) is not None] + \
            (["trust_archive"] if args.trust_archive else [])
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise InvalidArgument(f"{flag}: {args.model} is a smoothviz checkpoint, which records what it is")
        meta = read_checkpoint(args.model)["meta"]
        dataset = resolve_name(args.dataset or meta["dataset"])
        if meta["dataset"] != dataset:
            raise CheckpointError(f"{args.model} was trained on {meta['dataset']!r}, not on {dataset!r}")
        return dataset, meta.get("sigma"), str(args.model), meta, {}, False
    model, info = open_model(request, "cpu")
    data_text = args.dataset or info.dataset
    if data_text is None:
        raise InvalidArgument(f"--dataset: {info.source} does not say which data it takes; give --dataset (a "
                              "registered name, imagefolder:PATH or npz:FILE)")
    dataset = _data_name(data_text, info)
    check_fits(model, info, load_dataset(dataset), info.source)
    sigma = None if info.trained_sigma is None else f"constant:{info.trained_sigma!r}"
    meta = {"dataset": info.dataset or dataset, "arch": info.arch or info.kind, "sigma": sigma, "source": info.source,
            "input_shape": list(info.input_shape), "num_classes": info.num_classes}
    trust = request.code is not None or request.trust_archive
    return dataset, sigma, run_checkpoint(request), meta, {"model": run_record(request, info, dataset)}, trust


def resolve_points(args: argparse.Namespace) -> Resolved:
    """The run's dataset, canonical sigma spec, model file, meta, indices and description from the arguments.

    A foreign model is loaded (on the CPU) and checked against the data before anything else.
    """
    from smoothviz.data import load_dataset
    from smoothviz.knn_reference import reference_record
    from smoothviz.sigma import canonical_spec, parse_sigma_spec

    dataset, default_sigma, checkpoint, meta, description, trust = _resolve_model(args)
    spec_text = args.sigma or default_sigma
    if not spec_text:
        raise InvalidArgument("--sigma: the model records no sigma; give --sigma constant:S (or --trained-sigma S)")
    params = parse_sigma_spec(spec_text)
    spec = canonical_spec(params)
    ds = load_dataset(dataset)
    if args.sigma_reference is not None:
        if params["kind"] != "knn":
            raise InvalidArgument("--sigma-reference: only a knn sigma uses reference points")
        description = {**description, "sigma_reference": reference_record(args.sigma_reference, ds)}
    return Resolved(dataset, spec, checkpoint, meta, split_indices(args, ds, dataset), description, trust)


def add_split_arguments(parser: argparse.ArgumentParser, skip_help: str) -> None:
    """``--split`` and one of ``--points``, ``--indices``, ``--skip``: the points ``split_indices`` chooses."""
    parser.add_argument("--split", choices=("test", "train"), default="test")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--points", type=positive_int, default=None,
                       help="number of points, evenly spaced over the split (default: all)")
    group.add_argument("--indices", default=None, help="indices such as 0-99,150,200")
    group.add_argument("--skip", type=positive_int, default=None, metavar="N", help=skip_help)


def split_indices(args: argparse.Namespace, ds, dataset: str) -> list[int]:
    """The indices of ``--split`` that ``--indices``, ``--skip`` or ``--points`` choose (default all), checked."""
    from smoothviz.certify import select_split
    from smoothviz.points import evenly_spaced, parse_indices

    xs, _ = select_split(ds, args.split)
    size = int(xs.shape[0])
    if size == 0:
        raise InvalidArgument(f"--split {args.split}: {dataset} has no {args.split} points")
    if args.indices is not None:
        return parse_indices(args.indices, size)
    if args.skip is not None:
        return list(range(0, size, args.skip))
    return evenly_spaced(args.points or size, size)


def print_warnings(estimate: cost.Estimate, sigma_warning: str | None) -> None:
    """The time estimate and any warning about sigma(x), on stderr."""
    print(f"estimate: {estimate.text}", file=sys.stderr)
    if sigma_warning:
        print(f"warning: {sigma_warning}", file=sys.stderr)


def print_summary(store, run_id: int, radii: list[float], seconds: float | None = None, stream=None) -> None:
    """Run line, accuracy table at radii (sound, and naive when sigma varies), ACR, abstention."""
    import numpy as np

    from smoothviz import analysis
    from smoothviz.progress import format_seconds

    stream = stream or sys.stdout
    run = store.run(run_id)
    df = store.results(run_id)
    took = f", {format_seconds(seconds)} this session" if seconds is not None else ""
    print(f"run {run_id} ({run['name']}): {run['status']}, {run['done']}/{cost.plural(run['total'], 'point')}{took}",
          file=stream)
    if not len(df):
        return
    sound = analysis.accuracy_table(df, radii)
    naive = analysis.accuracy_table(df, radii, use="naive_radius")
    varies = analysis.input_dependent(run) and not np.allclose(df["radius"], df["naive_radius"])
    header = f"{'radius':>8}  {'certified accuracy':>18}" + (f"  {'naive (no guarantee)':>20}" if varies else "")
    print(header, file=stream)
    for (r, acc), nacc in zip(sound.itertuples(index=False), naive["certified_accuracy"]):
        line = f"{r:>8.3g}  {acc:>18.3f}" + (f"  {nacc:>20.3f}" if varies else "")
        print(line, file=stream)
    ceiling = analysis.run_ceiling(run)
    print(f"ACR {analysis.average_certified_radius(df):.3f}, abstention {analysis.abstention_rate(df):.1%}, "
          f"mean {df['seconds'].mean():.3g} s/point, ceiling {ceiling:.3f}", file=stream)
    if analysis.naive_only(run):
        print(f"{analysis.NAIVE_ONLY}: {run['sigma_spec']} has no semi-elasticity, so the sound radius is 0 "
              "beyond the prediction at each point", file=stream)


def _rate(prepared, options: dict, cache: Path) -> tuple[str, cost.Rate]:
    """The rate key of a prepared run and its recorded or freshly measured sampling rate."""
    from smoothviz.store import file_sha256

    ds = prepared.dataset
    return cost.engine_rate(file_sha256(prepared.checkpoint) or "", prepared.engine, ds.input_shape, ds.num_classes,
                            prepared.device, options, cache)


def _new_run(args: argparse.Namespace) -> tuple:
    """Check a new or resumable run completely, then open the store and create or find it.

    Returns (store, run id, prepared run, rate key, estimate). The store is opened only when its
    file exists (to find a run to resume) or once every check has passed (creating it).
    """
    from smoothviz.certify import prepare_run
    from smoothviz.device import resolve_device
    from smoothviz.knn_reference import remember_statistics
    from smoothviz.sigma import parse_sigma_spec, semi_elasticity
    from smoothviz.store import Store, default_db

    if args.n0 > args.n:
        raise InvalidArgument(f"--n0 {args.n0} must not exceed --n {args.n}")
    points = resolve_points(args)
    options = {**speed_options(args), **points.description}
    device = str(resolve_device(args.device))
    spec, indices = points.sigma_spec, points.indices
    name = args.name or f"{Path(points.checkpoint).stem} {spec} n={args.n}"
    config = dict(
        name=name, dataset=points.dataset, split=args.split, checkpoint=points.checkpoint, sigma_spec=spec,
        n0=args.n0, n=args.n, alpha=args.alpha, device=device, indices=indices, seed=args.seed,
        options=options,
    )
    config.update(sequential_config(args, config))
    prepared = prepare_run({**config, "batch_size": args.batch_size}, trust_code=points.trust_code)
    db = Path(args.db) if args.db is not None else default_db()
    key, rate = _rate(prepared, options, cost.rates_file(db))
    store = Store(db) if db.exists() else None
    try:
        run_id = None if store is None or args.new else store.find_run(**config)
        done = len(store.done_indices(run_id)) if run_id is not None else 0
        estimate = cost.estimate_certify(len(indices) - done, args.n0, args.n, rate)
        cost.refuse_long(estimate, "this certification", args.allow_long, "--n or --points")
        if store is None:
            store = Store(db)
        remember_statistics(prepared.sigma_fn)
        if run_id is None:
            params = parse_sigma_spec(spec)
            run_id = store.create_run(**config, sigma_params=params, r=semi_elasticity(params),
                                      batch_size=args.batch_size)
            print(f"run {run_id} created in {store.path}", file=sys.stderr)
        else:
            print(f"run {run_id}: resuming ({done} of {cost.plural(len(indices), 'point')} stored)", file=sys.stderr)
    except BaseException:
        if store is not None:
            store.close()
        raise
    return store, run_id, prepared, key, estimate


def _recorded_run(args: argparse.Namespace) -> tuple:
    """Check a run of the store before it executes (its record is left as it is when refused)."""
    from smoothviz.certify import check_executable, prepare_run
    from smoothviz.knn_reference import remember_statistics
    from smoothviz.store import Store

    store = Store(args.db, create=False)
    try:
        run_id = store.resolve_run(args.run)
        run = store.run(run_id)
        check_executable(run)
        device = args.device if args.device != "auto" else None
        prepared = prepare_run(run, device, args.batch_size, trust_code=_run_trusted(args, run))
        key, rate = _rate(prepared, run["options"], cost.rates_file(store.path))
        remaining = len(run["indices"]) - len(store.done_indices(run_id))
        estimate = cost.estimate_certify(remaining, int(run["n0"]), int(run["n"]), rate)
        remember_statistics(prepared.sigma_fn)
    except BaseException:
        store.close()
        raise
    return store, run_id, prepared, key, estimate


def _run_trusted(args: argparse.Namespace, run: dict) -> bool:
    """Whether --run RUN may load a model that runs code: --trust-archive, or --model-code naming the
    code the run records."""
    record = (run.get("options") or {}).get("model") or {}
    if args.model_code is None:
        return bool(args.trust_archive)
    from smoothviz.model_sources import parse_code

    path, function = parse_code(args.model_code)
    if record.get("code") != f"{path}:{function}":
        raise InvalidArgument(f"--model-code {args.model_code}: run {run['id']} records "
                              f"{record.get('code') or 'no model code'}")
    return True


def run(args: argparse.Namespace) -> int:
    check_sequential(args)
    if launch.requested(args) or args.rendezvous is not None:
        return launch.launch(NAME, args, add_arguments)
    if launch.distributed_world() is not None:
        from smoothviz.commands import _torchrun

        return _torchrun.certify(args, _certify)
    return _certify(args, None)


def _certify(args: argparse.Namespace, execute=None) -> int:
    """The verb in this process; ``execute`` (torchrun: the run spread over every rank) stands in
    for ``certify.run_certification``."""
    from smoothviz.certify import run_certification
    from smoothviz.device import keep_cpu_buffers
    from smoothviz.progress import ProgressBar

    radii = parse_radii(args.radii)
    keep_cpu_buffers()
    store, run_id, prepared, key, estimate = (_recorded_run if args.run is not None else _new_run)(args)
    with store:
        print_warnings(estimate, prepared.sigma_warning)
        bar = None if args.quiet else ProgressBar("points")
        last: dict = {}

        def progress(info: dict) -> None:
            last.update(info)
            if bar is not None:
                bar(info)

        t0 = time.perf_counter()
        try:
            status = (execute or run_certification)(store, run_id, progress=progress, prepared=prepared)
        finally:
            if bar is not None:
                bar.close()
            # a rate measured over several ranks is not this device's
            if execute is None and last.get("elapsed", 0.0) >= cost.MIN_RECORD_SECONDS and last.get("samples"):
                cost.record_rate(key, last["samples"] / last["elapsed"], f"certify run {run_id}",
                                 cost.rates_file(store.path))
        print_summary(store, run_id, radii, time.perf_counter() - t0)
        print_sequential_summary(store, run_id)
    return 0 if status == "done" else 1
