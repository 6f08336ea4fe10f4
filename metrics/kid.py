"""Kernel Inception Distance (docs/REFERENCE.md §9.1): the unbiased polynomial-kernel MMD² averaged over random subsets.

Bińkowski et al., "Demystifying MMD GANs" (ICLR 2018), eq. 4 with k(a, b) = (aᵀb / d + 1)³. The reference computes it
with torchmetrics' `KernelInceptionDistance`; `kid` reproduces that metric's subset draws exactly (one `randperm` of
the real set, then one of the generated set, per subset) so that, given a generator in the state of torchmetrics'
global RNG, both return the same subsets and hence the same mean and (population) standard deviation.
`kid_standard_error` gives a KID's noise over the generated images, and `kid_difference` tests two models' KIDs
against it (one fold or pooled over folds; the demo's and the study's reports).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def polynomial_kernel(
    a: torch.Tensor, b: torch.Tensor, degree: int = 3, gamma: float | None = None, coef: float = 1.0
) -> torch.Tensor:
    """k(a_i, b_j) = (gamma · a_iᵀ b_j + coef)^degree, gamma defaulting to 1/D.

    Args:
        a: (N, D) features.
        b: (M, D) features.
        degree: polynomial degree.
        gamma: scale of the inner product; None means 1/D.
        coef: additive constant.

    Returns:
        (N, M) kernel matrix.
    """
    if gamma is None:
        gamma = 1.0 / a.shape[1]
    return (a @ b.T * gamma + coef) ** degree


def mmd2_unbiased(k_xx: torch.Tensor, k_yy: torch.Tensor, k_xy: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD² from kernel matrices: off-diagonal means of k_xx and k_yy minus twice the mean of k_xy.

    Args:
        k_xx: (M, M) kernel among the first sample.
        k_yy: (N, N) kernel among the second sample.
        k_xy: (M, N) cross kernel.

    Returns:
        Scalar tensor.
    """
    m, n = k_xx.shape[0], k_yy.shape[0]
    sum_xx = k_xx.sum() - k_xx.diagonal().sum()
    sum_yy = k_yy.sum() - k_yy.diagonal().sum()
    return sum_xx / (m * (m - 1)) + sum_yy / (n * (n - 1)) - 2 * k_xy.mean()


def polynomial_mmd2(
    x: torch.Tensor, y: torch.Tensor, degree: int = 3, gamma: float | None = None, coef: float = 1.0
) -> torch.Tensor:
    """Unbiased polynomial-kernel MMD² between two feature samples.

    Args:
        x: (M, D) features.
        y: (N, D) features.
        degree, gamma, coef: kernel parameters (see `polynomial_kernel`).

    Returns:
        Scalar tensor.
    """
    k_xx = polynomial_kernel(x, x, degree, gamma, coef)
    k_yy = polynomial_kernel(y, y, degree, gamma, coef)
    k_xy = polynomial_kernel(x, y, degree, gamma, coef)
    return mmd2_unbiased(k_xx, k_yy, k_xy)


def kid(
    real_feats: torch.Tensor,
    fake_feats: torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
) -> tuple[float, float]:
    """KID: mean and population standard deviation of the unbiased MMD² over random subsets.

    Each subset draws `subset_size` real and `subset_size` generated features without replacement, by
    `randperm(n_real)` then `randperm(n_fake)` on `generator` (CPU), in the order torchmetrics draws them. The kernel
    is evaluated in float64 whatever the input dtype (the reference runs float32; the difference is rounding).

    Args:
        real_feats: (N_r, D) real features.
        fake_feats: (N_f, D) generated features.
        subsets: number of subsets (reference: 100).
        subset_size: features per subset and per set (reference: number of generated images // 4).
        generator: CPU generator driving the subset draws; None uses torch's global RNG, as torchmetrics does.
        degree, gamma, coef: kernel parameters (reference: 3, 1/D, 1).

    Returns:
        (mean, std) over the subsets, std with the 1/subsets normalisation (torchmetrics' `unbiased=False`).
    """
    n_real, n_fake = real_feats.shape[0], fake_feats.shape[0]
    if not 2 <= subset_size <= min(n_real, n_fake):
        raise ValueError(f"KID subset_size={subset_size} must lie in [2, min(#real={n_real}, #generated={n_fake})]")
    real = real_feats.double()
    fake = fake_feats.double()
    scores = []
    for _ in range(subsets):
        real_idx = torch.randperm(n_real, generator=generator)[:subset_size].to(real.device)
        fake_idx = torch.randperm(n_fake, generator=generator)[:subset_size].to(fake.device)
        scores.append(polynomial_mmd2(real[real_idx], fake[fake_idx], degree, gamma, coef))
    values = torch.stack(scores)
    return values.mean().item(), values.std(correction=0).item()


def kid_standard_error(
    real_feats: torch.Tensor,
    fake_feats: torch.Tensor,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
) -> float:
    """Jackknife standard error of KID over the generated images, the real images held fixed.

    KID (the mean over random subsets) estimates the unbiased MMD² of the whole two sets; this is the jackknife
    standard error of that whole-set statistic when one generated image at a time is left out. The real set is
    the same for every value compared against it (the validations of one run, the models of one table), so its
    own sampling noise is shared and cancels in their differences; what differs between them is the generated
    images, and that is the noise reported (docs/DECISIONS.md §C9).

    Args:
        real_feats: (N_r, D) real features.
        fake_feats: (N_f, D) generated features, N_f >= 3.
        degree, gamma, coef: kernel parameters (see `polynomial_kernel`).

    Returns:
        The standard error, in KID's units.
    """
    n, m = fake_feats.shape[0], real_feats.shape[0]
    if n < 3:
        raise ValueError(f"the KID standard error needs at least 3 generated images, got {n}")
    real, fake = real_feats.double(), fake_feats.double()
    k_yy = polynomial_kernel(fake, fake, degree, gamma, coef)
    k_xy = polynomial_kernel(real, fake, degree, gamma, coef)
    # Leaving out generated image l removes its row and column of k_yy and its column of k_xy; the real-real term
    # does not change and drops out of the variance.
    rows = k_yy.sum(1) - k_yy.diagonal()  # (N_f,) off-diagonal row sums
    cols = k_xy.sum(0)  # (N_f,) sums over the real images
    loo = (rows.sum() - 2 * rows) / ((n - 1) * (n - 2)) - 2 * (cols.sum() - cols) / (m * (n - 1))
    variance = (n - 1) / n * ((loo - loo.mean()) ** 2).sum()
    return float(variance.sqrt())


@dataclass(frozen=True)
class KidDifference:
    """A KID difference between two sets of generated images, pooled over folds.

    Attributes:
        diff: mean over folds of KID(a) - KID(b).
        se: its standard error, sqrt(sum over folds of se_a^2 + se_b^2) / folds.
        z: diff / se (NaN when se is 0).
        p_value: two-sided normal p-value of z.
        folds: folds pooled.
    """

    diff: float
    se: float
    z: float
    p_value: float
    folds: int


def kid_difference(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> KidDifference:
    """z-test of the fold-mean difference of two models' KIDs, each fold's KID with its `kid_standard_error`.

    The folds are independent data and each model's KID error is estimated over its own generated images, so the
    per-fold differences have variance se_a^2 + se_b^2 (the real reference images, shared by both, add no
    difference noise) and their mean has the variance of their sum divided by folds^2. With one fold this is the
    comparison `--best-rule within-noise` makes (training/selection.py).

    Args:
        a, b: per fold (KID, standard error) of each model, the same folds in the same order (any one unit).
    """
    from scipy import stats

    if len(a) != len(b) or not a:
        raise ValueError(f"need the same nonzero number of folds, got {len(a)} and {len(b)}")
    diff = sum(ka - kb for (ka, _), (kb, _) in zip(a, b)) / len(a)
    se = math.sqrt(sum(sa**2 + sb**2 for (_, sa), (_, sb) in zip(a, b))) / len(a)
    z = diff / se if se > 0 else math.nan
    p = float(2 * stats.norm.sf(abs(z))) if math.isfinite(z) else math.nan
    return KidDifference(diff, se, z, p, len(a))
