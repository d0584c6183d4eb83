"""The training points of a kNN sigma(x) for any data, and its statistic m cached by their content.

``knn:SIGMA_B,R,K`` (``sigma.KNN``) measures the mean distance from x to its k nearest training
points. A registered dataset brings its training split, an npz its ``x_train``; for any data a
reference set can be named instead (``--sigma-reference imagefolder:PATH|npz:FILE``), decoded
with the data's preprocessing. The default m (the mean kNN distance over the reference points,
each excluding itself) costs N^2 distances; it is cached under the reference's content hash and
k (``remember_statistics``, which the verbs call once a run has passed every check, so a refused
command writes nothing), and later runs on the same points skip it. Any m keeps sigma r-semi-elastic (it only shifts
ln sigma by a constant), so a damaged or tampered cache cannot make a certificate unsound; a
cache that cannot be read or written costs only the computation.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from smoothviz.data import Dataset
from smoothviz.data_sources import ReferenceSet, load_reference, materialize
from smoothviz.errors import DatasetUnavailable, InvalidArgument, SigmaSpecError
from smoothviz.sigma import KNN, SigmaFunction, build_sigma, check_knn_k, parse_sigma_spec

_CACHE_VERSION = 1


def cache_dir() -> Path:
    """Where statistics are cached: ``$SMOOTHVIZ_CACHE``, else ``runs/cache``."""
    return Path(os.environ.get("SMOOTHVIZ_CACHE") or "runs/cache")


def _cache_file(reference: ReferenceSet, k: int, directory: Path) -> Path:
    key = hashlib.sha256(f"{reference.sha256}:{k}".encode()).hexdigest()[:32]
    return directory / f"knn-{key}.json"


def cached_m(reference: ReferenceSet, k: int, directory: Path | None = None) -> float | None:
    """The m recorded for these reference points and k, or None (missing or unreadable cache)."""
    path = _cache_file(reference, k, directory or cache_dir())
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("version") != _CACHE_VERSION or entry.get("sha256") != reference.sha256 \
            or entry.get("k") != k:
        return None
    m = entry.get("m")
    return float(m) if isinstance(m, (int, float)) and not isinstance(m, bool) and math.isfinite(m) else None


def record_m(reference: ReferenceSet, k: int, distances: torch.Tensor, directory: Path | None = None) -> bool:
    """Cache m and a summary of the reference points' kNN distances; False when it cannot be written."""
    from smoothviz.outputs import write_output

    d = distances.double()
    entry = {"version": _CACHE_VERSION, "reference": reference.name, "sha256": reference.sha256, "k": k,
             "points": int(d.numel()), "m": float(d.mean()), "distance_min": float(d.min()),
             "distance_max": float(d.max())}
    path = _cache_file(reference, k, directory or cache_dir())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_output(path, lambda fh: fh.write(json.dumps(entry) + "\n"), what="kNN cache")
    except (OSError, InvalidArgument):
        return False
    return True


def reference_record(text: str, dataset: Dataset) -> dict:
    """What a run records of its sigma reference (under ``options["sigma_reference"]``): the
    canonical source and the SHA-256 of its content."""
    reference = load_reference(text, like=dataset)
    return {"source": reference.name, "sha256": reference.sha256}


def build_run_sigma(
    spec: str,
    dataset: Dataset,
    reference: str | Mapping | None = None,
    device: str | torch.device | None = None,
    directory: Path | None = None,
    model: torch.nn.Module | None = None,
) -> SigmaFunction:
    """The run's sigma function: constant, data-dependent (ddrs, optimised for the base classifier
    ``model``), or kNN on ``reference`` (a source string, or a run's record with its SHA-256,
    checked) or else on the dataset's training split.

    SigmaSpecError when a kNN sigma has no training points or a ddrs sigma no model;
    DatasetUnavailable when a recorded reference changed.
    """
    params = parse_sigma_spec(spec)
    if params["kind"] in ("constant", "ddrs"):
        return build_sigma(spec, model=model)
    if reference is None:
        train = dataset.train_x
        if len(train) == 0:
            raise SigmaSpecError(f"sigma spec {spec!r}: {dataset.name} has no training points for the kNN distances; "
                                 "give a reference set with --sigma-reference imagefolder:PATH or npz:FILE")
        return build_sigma(spec, materialize(train), device=device)
    text = reference if isinstance(reference, str) else str(reference["source"])
    ref = load_reference(text, like=dataset)
    if isinstance(reference, Mapping) and reference.get("sha256") not in (None, ref.sha256):
        raise DatasetUnavailable(f"sigma reference {ref.name} changed since the run was recorded (SHA-256 differs)")
    k = int(params["k"])
    check_knn_k(k, int(ref.x.shape[0]), spec)
    m = params["m"] if params["m"] is not None else cached_m(ref, k, directory)
    sigma = KNN(ref.x, params["sigma_b"], params["r"], k, m=m, sigma_min=params["sigma_min"],
                sigma_max=params["sigma_max"], device=device)
    if m is None:
        sigma.pending_statistics = (ref, directory)  # type: ignore[attr-defined]
    return sigma


def remember_statistics(sigma: SigmaFunction) -> bool:
    """Cache the m that ``build_run_sigma`` computed for a reference set (once); False when there
    is nothing to cache or it cannot be written."""
    pending = getattr(sigma, "pending_statistics", None)
    if pending is None or not isinstance(sigma, KNN):
        return False
    ref, directory = pending
    del sigma.pending_statistics
    return record_m(ref, sigma.k, sigma.training_mean_distance(), directory)
