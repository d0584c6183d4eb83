"""Everything the sample explorer shows about one test point, as plain data.

sigma(x), the k nearest training images behind a kNN sigma, a grid of noisy copies at sigma(x) with
the base classifier's vote on each, and the CERTIFY result of Cohen et al. (2019) with sigma(x):
vote counts, Clopper-Pearson p_A, the sound input-dependent radius and the naive one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from smoothviz.certify import certify_test_points
from smoothviz.data import Dataset
from smoothviz.errors import InvalidArgument
from smoothviz.sigma import SigmaFunction


@dataclass(frozen=True)
class Neighbours:
    """The k training points closest to x in L2 over flattened inputs (the distance kNN sigma uses)."""

    indices: np.ndarray  # [k] indices into the training set, nearest first
    distances: np.ndarray  # [k] L2 distances
    labels: np.ndarray  # [k] training labels
    images: np.ndarray  # [k, *input_shape]


@dataclass(frozen=True)
class PointExploration:
    """One test point under smoothing with sigma(x): inputs, samples, votes and certificates."""

    idx: int
    label: int
    image: np.ndarray  # [*input_shape]
    sigma: float
    sigma_spec: str
    r: float
    dim: int
    neighbours: Neighbours | None  # only for sigma functions that look at neighbours
    noisy: np.ndarray  # [m, *input_shape], x + N(0, sigma(x)^2 I), not clipped
    noisy_predictions: np.ndarray  # [m] base-classifier class of each noisy copy
    counts: np.ndarray  # [num_classes] estimation votes from CERTIFY
    n0: int
    n: int
    alpha: float
    predict: int  # -1 = abstain
    p_a_lower: float
    radius: float  # sound certificate (Sukenik et al. 2022 for r > 0; Cohen et al. 2019 at r = 0)
    naive_radius: float  # sigma(x) * Phi^-1(p_A): NOT a guarantee when r > 0

    @property
    def abstains(self) -> bool:
        """True when the smoothed classifier abstains (p_A lower bound not above 1/2)."""
        return self.predict < 0

    @property
    def correct(self) -> bool:
        """True when the smoothed prediction equals the label."""
        return self.predict == self.label


def nearest_neighbours(
    train_x: torch.Tensor, x: torch.Tensor, k: int, chunk_size: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and L2 distances of the ``k`` training points nearest to the single input ``x``.

    Chunked over the training set so a large one (60k MNIST images) never makes one big matrix.
    """
    n = train_x.shape[0]
    if not 1 <= k <= n:
        raise InvalidArgument(f"k must be in [1, {n}] (the training set size), got {k}")
    q = x.reshape(1, -1).to(train_x.device, torch.float32)
    dists = []
    for start in range(0, n, chunk_size):
        block = train_x[start : start + chunk_size].reshape(-1, q.shape[1]).to(torch.float32)
        dists.append(torch.cdist(q, block).squeeze(0))
    d = torch.cat(dists)
    vals, idx = torch.topk(d, k, largest=False, sorted=True)
    return idx.cpu().numpy(), vals.cpu().numpy()


def neighbour_count(sigma_fn: SigmaFunction) -> int | None:
    """The k of a kNN sigma function, or None for sigma functions that ignore neighbours."""
    k = sigma_fn.params().get("k")
    return None if k is None else int(k)


def noisy_copies(
    model: torch.nn.Module,
    x: torch.Tensor,
    sigma: float,
    count: int,
    generator: torch.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` draws of x + N(0, sigma^2 I) and the base classifier's class for each."""
    noise = torch.randn((count, *x.shape), generator=generator, device=generator.device)
    noisy = x.unsqueeze(0).to(noise.device) + sigma * noise
    device = next(model.parameters()).device
    with torch.no_grad():
        pred = model(noisy.to(device)).argmax(dim=1)
    return noisy.cpu().numpy(), pred.cpu().numpy()


def explore_point(
    model: torch.nn.Module,
    dataset: Dataset,
    idx: int,
    sigma_fn: SigmaFunction,
    *,
    n0: int = 100,
    n: int = 2000,
    alpha: float = 0.001,
    num_noisy: int = 16,
    batch_size: int = 1000,
    seed: int = 0,
) -> PointExploration:
    """Explore test point ``idx``: sigma(x), neighbours, noisy copies and the certificate.

    Everything runs on the model's device. The certificate comes from ``certify.certify_points``
    (the same engine as the Certify page), so the numbers here equal the ones a certification run
    would store for this point and seed.
    """
    num_test = dataset.test_x.shape[0]
    if not 0 <= idx < num_test:
        raise InvalidArgument(f"test index must be in [0, {num_test - 1}], got {idx}")
    if num_noisy < 1:
        raise InvalidArgument(f"num_noisy must be >= 1, got {num_noisy}")
    if sigma_fn.r is None:
        raise InvalidArgument(f"sigma spec {sigma_fn.spec!r} has no semi-elasticity, so no sound radius to explore; "
                              "use a constant or kNN sigma")
    device = next(model.parameters()).device
    x = dataset.test_x[idx]
    label = int(dataset.test_y[idx])
    sigma = float(sigma_fn(x.unsqueeze(0).to(device))[0])

    neighbours = None
    k = neighbour_count(sigma_fn)
    if k is not None:
        nn_idx, nn_dist = nearest_neighbours(dataset.train_x, x, k)
        neighbours = Neighbours(
            indices=nn_idx,
            distances=nn_dist,
            labels=dataset.train_y[nn_idx].cpu().numpy(),
            images=dataset.train_x[nn_idx].cpu().numpy(),
        )

    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    noisy, noisy_pred = noisy_copies(model, x.cpu(), sigma, num_noisy, gen)

    (res,) = certify_test_points(
        model, dataset, [idx], sigma_fn, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed
    )
    return PointExploration(
        idx=idx,
        label=label,
        image=x.cpu().numpy(),
        sigma=sigma,
        sigma_spec=sigma_fn.spec,
        r=float(sigma_fn.r),
        dim=dataset.dim,
        neighbours=neighbours,
        noisy=noisy,
        noisy_predictions=noisy_pred,
        counts=np.asarray(res.counts, dtype=np.int64),
        n0=n0,
        n=n,
        alpha=alpha,
        predict=int(res.predict),
        p_a_lower=float(res.p_a_lower),
        radius=float(res.radius),
        naive_radius=float(res.naive_radius),
    )


def sample_test_sigmas(sigma_fn: SigmaFunction, dataset: Dataset, max_points: int = 500, seed: int = 0) -> np.ndarray:
    """sigma(x) on a fixed random subset of at most ``max_points`` test points (context for one point's sigma)."""
    if max_points < 1:
        raise InvalidArgument(f"max_points must be >= 1, got {max_points}")
    num_test = dataset.test_x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(num_test, generator=gen)[: min(max_points, num_test)]
    with torch.no_grad():
        return sigma_fn(dataset.test_x[idx]).detach().cpu().numpy().astype(np.float64)
