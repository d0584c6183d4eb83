"""Data for the 2-D playground: decision regions, smoothed regions, sigma(x) maps and certified circles.

Everything is computed on a regular grid over a toy2d dataset, with all grid points in one batched
Monte Carlo call, so a 60x60 grid at a few hundred samples per point takes well under a second on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smoothviz.bounds import clopper_pearson_lower
from smoothviz.certify import sample_counts
from smoothviz.data import Dataset
from smoothviz.errors import InvalidArgument
from smoothviz.certify import certify_test_points
from smoothviz.models import load_checkpoint
from smoothviz.sigma import SigmaFunction
from smoothviz.train import train_model

TOY_DATASETS = ("toy2d-moons", "toy2d-circles", "toy2d-blobs")


@dataclass(frozen=True)
class Grid:
    """A regular grid: ``points[i * len(xs) + j] == (xs[j], ys[i])``."""

    xs: np.ndarray  # [W]
    ys: np.ndarray  # [H]
    points: torch.Tensor  # [H*W, 2] float32

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W): the shape of every map on this grid."""
        return (len(self.ys), len(self.xs))


@dataclass(frozen=True)
class SmoothedMap:
    """Monte Carlo smoothed classifier on a grid: top class, its Clopper-Pearson bound, abstentions."""

    pred: np.ndarray  # [H, W] smoothed class, -1 where p_A lower bound <= 1/2 (abstain)
    top: np.ndarray  # [H, W] most voted class
    p_a_lower: np.ndarray  # [H, W] one-sided Clopper-Pearson lower bound of the top class
    n: int
    alpha: float


@dataclass(frozen=True)
class CertifiedPoint:
    """CERTIFY result for one toy2d test point, with its coordinates for drawing its circle."""

    idx: int
    x: float
    y: float
    label: int
    predict: int
    p_a_lower: float
    sigma: float
    radius: float
    naive_radius: float

    def circle(self) -> dict[str, float]:
        """The point as a circle spec for ``plots_explore.region_map``."""
        return {"x": self.x, "y": self.y, "radius": self.radius, "naive_radius": self.naive_radius}


def check_toy(dataset: Dataset) -> None:
    """Raise InvalidArgument unless ``dataset`` has 2-D inputs (the playground draws the plane)."""
    if tuple(dataset.input_shape) != (2,):
        raise InvalidArgument(
            f"the 2-D playground needs a 2-D dataset such as {', '.join(TOY_DATASETS)}; "
            f"{dataset.name!r} has input shape {tuple(dataset.input_shape)}"
        )


def make_grid(dataset: Dataset, resolution: int = 60, margin: float = 0.15) -> Grid:
    """A ``resolution`` x ``resolution`` grid covering train and test points plus a relative margin."""
    check_toy(dataset)
    if not 2 <= resolution <= 400:
        raise InvalidArgument(f"resolution must be in [2, 400], got {resolution}")
    pts = torch.cat([dataset.train_x, dataset.test_x]).reshape(-1, 2).to(torch.float64)
    lo, hi = pts.min(dim=0).values.numpy(), pts.max(dim=0).values.numpy()
    pad = margin * (hi - lo)
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], resolution)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], resolution)
    gx, gy = np.meshgrid(xs, ys)
    points = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], axis=1)).to(torch.float32)
    return Grid(xs=xs, ys=ys, points=points)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def base_regions(model: torch.nn.Module, grid: Grid) -> np.ndarray:
    """The base classifier's class at every grid point, shape (H, W)."""
    with torch.no_grad():
        pred = model(grid.points.to(_model_device(model))).argmax(dim=1)
    return pred.cpu().numpy().reshape(grid.shape)


def sigma_map(sigma_fn: SigmaFunction, grid: Grid) -> np.ndarray:
    """sigma(x) at every grid point, shape (H, W)."""
    return sigma_fn(grid.points).detach().cpu().numpy().astype(np.float64).reshape(grid.shape)


def smoothed_regions(
    model: torch.nn.Module,
    grid: Grid,
    sigma_fn: SigmaFunction,
    num_classes: int,
    n: int = 300,
    alpha: float = 0.001,
    seed: int = 0,
    batch_size: int = 200_000,
) -> SmoothedMap:
    """The smoothed classifier g on the grid by Monte Carlo: n noisy votes per grid point, all at once.

    The top class and its Clopper-Pearson bound come from the same n votes, so this is a picture of g
    (abstain where the bound is not above 1/2), not a certificate; certificates use ``certify_points``.
    """
    if n < 1:
        raise InvalidArgument(f"n must be >= 1, got {n}")
    if not 0.0 < alpha < 1.0:
        raise InvalidArgument(f"alpha must be in (0, 1), got {alpha}")
    device = _model_device(model)
    x = grid.points.to(device)
    sig = sigma_fn(x).to(device=device, dtype=torch.float32)
    gen = torch.Generator(device=device).manual_seed(seed)
    counts = sample_counts(model, x, sig, num=n, num_classes=num_classes, batch_size=batch_size, generator=gen)
    counts = counts.cpu().numpy()
    top = counts.argmax(axis=1)
    p_lower = np.asarray(clopper_pearson_lower(counts[np.arange(len(top)), top], n, alpha), dtype=np.float64)
    pred = np.where(p_lower > 0.5, top, -1)
    return SmoothedMap(
        pred=pred.reshape(grid.shape),
        top=top.reshape(grid.shape),
        p_a_lower=p_lower.reshape(grid.shape),
        n=n,
        alpha=alpha,
    )


def certify_selected(
    model: torch.nn.Module,
    dataset: Dataset,
    indices: list[int],
    sigma_fn: SigmaFunction,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    seed: int = 0,
    batch_size: int = 10_000,
) -> list[CertifiedPoint]:
    """CERTIFY (Cohen et al. 2019, with sigma(x) and the sound radius) for the chosen test points."""
    check_toy(dataset)
    num_test = dataset.test_x.shape[0]
    bad = [i for i in indices if not 0 <= i < num_test]
    if bad:
        raise InvalidArgument(f"test indices must be in [0, {num_test - 1}], got {bad}")
    if not indices:
        return []
    results = certify_test_points(
        model, dataset, indices, sigma_fn, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed
    )
    xy = dataset.test_x[torch.tensor(indices, dtype=torch.long)].cpu().numpy()
    return [
        CertifiedPoint(
            idx=int(res.idx),
            x=float(xy[i, 0]),
            y=float(xy[i, 1]),
            label=int(res.label),
            predict=int(res.predict),
            p_a_lower=float(res.p_a_lower),
            sigma=float(res.sigma),
            radius=float(res.radius),
            naive_radius=float(res.naive_radius),
        )
        for i, res in enumerate(results)
    ]


def fit_toy_model(
    dataset: Dataset,
    sigma_spec: str,
    out_dir: Path,
    seed: int = 0,
    epochs: int = 30,
) -> tuple[torch.nn.Module, dict]:
    """Train a small MLP on a toy2d dataset with noise ``sigma_spec`` (seconds on CPU) and load it.

    The checkpoint is named after dataset, sigma, seed and epochs; ``train_model`` returns at once
    when that file already holds this exact training, so a restarted dashboard does not retrain.
    """
    check_toy(dataset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in sigma_spec)
    out = out_dir / f"playground-{dataset.name}-{safe}-s{seed}-e{epochs}.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches of 128 two-dimensional points: extra threads only add sync cost
    try:
        train_model(dataset, "mlp", sigma_spec, epochs, out, seed=seed, device="cpu", resume=True)
    finally:
        torch.set_num_threads(threads)
    return load_checkpoint(out, device="cpu", expected_dataset=dataset.name)


def indices_from_selection(points: list[dict], limit: int | None = None) -> list[int]:
    """Dataset indices of the points in a plotly selection (their ``customdata``), first-seen order.

    Region and abstention cells carry no integer id and are ignored, so a box selection over the
    map yields exactly the test points inside the box.
    """
    out: list[int] = []
    for p in points:
        cd = p.get("customdata")
        if isinstance(cd, (list, tuple)):
            cd = cd[0] if len(cd) == 1 else None
        if isinstance(cd, bool) or not isinstance(cd, (int, float)) or float(cd) != int(cd):
            continue
        if int(cd) not in out:
            out.append(int(cd))
        if limit is not None and len(out) >= limit:
            break
    return out
