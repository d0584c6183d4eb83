"""The reference algorithm of Cohen et al. (2019), re-implemented as the speed baseline.

Cohen, Rosenfeld, Kolter, "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019,
and its public code (locuslab/smoothing, ``code/core.py``): one point at a time; each batch is the
point repeated ``batch_size`` times (1000 by default), Gaussian noise is drawn for that batch, the
base classifier's argmax is copied to the host and the votes are counted in a Python loop. The
structure (and hence the per-batch overheads) is kept on purpose, so the benchmark compares the
engine against what that code does; the only changes are a seeded generator instead of the global
RNG, any device instead of a hard-coded GPU, and scipy's beta quantile for Clopper-Pearson.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import beta, norm
from torch import Tensor, nn

ABSTAIN = -1
REFERENCE_BATCH_SIZE = 1000


def count_votes(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Votes per class, counted one label at a time as the reference code does."""
    counts = np.zeros(num_classes, dtype=int)
    for label in labels:
        counts[label] += 1
    return counts


def reference_sample_counts(
    model: nn.Module,
    x: Tensor,
    sigma: float,
    num: int,
    num_classes: int,
    batch_size: int = REFERENCE_BATCH_SIZE,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Votes of ``num`` noisy copies of the single point ``x`` ([C, H, W] or any shape)."""
    counts = np.zeros(num_classes, dtype=int)
    remaining = num
    with torch.no_grad():
        for _ in range(math.ceil(num / batch_size)):
            this_batch = min(batch_size, remaining)
            remaining -= this_batch
            batch = x.repeat((this_batch,) + (1,) * x.dim())
            noise = torch.randn(batch.shape, generator=generator, device=batch.device) * sigma
            predictions = model(batch + noise).argmax(1)
            counts += count_votes(predictions.cpu().numpy(), num_classes)
    return counts


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion."""
    return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))


def reference_certify(
    model: nn.Module,
    x: Tensor,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    num_classes: int,
    batch_size: int = REFERENCE_BATCH_SIZE,
    generator: torch.Generator | None = None,
) -> tuple[int, float]:
    """CERTIFY of Cohen et al. (2019, Algorithm "certify") for one point: (class or -1, radius)."""
    model.eval()
    selection = reference_sample_counts(model, x, sigma, n0, num_classes, batch_size, generator)
    guess = int(selection.argmax())
    estimation = reference_sample_counts(model, x, sigma, n, num_classes, batch_size, generator)
    p_a = clopper_pearson_lower(int(estimation[guess]), n, alpha)
    if p_a < 0.5:
        return ABSTAIN, 0.0
    return guess, float(sigma * norm.ppf(p_a))
