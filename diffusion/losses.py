"""Likelihood terms of the variational bound (pure functions on tensors, any shape, elementwise).

Formulas follow DDPM (Ho et al. 2020, section 3.3, the discretised decoder) and IDDPM (Nichol & Dhariwal 2021),
as the reference uses them.
"""

from __future__ import annotations

import math

import torch


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first.

    Args:
        x: tensor of shape (N, ...).

    Returns:
        Tensor of shape (N,).
    """
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats, elementwise (arguments broadcast).

    Returns:
        0.5 * (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2)).
    """
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF used by the reference's decoder likelihood.

    Returns:
        0.5 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3))), same shape as x.
    """
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-probability of data in [-1, 1] quantised to 256 bins under a Gaussian (DDPM section 3.3).

    Each value owns the bin [x - 1/255, x + 1/255]; the two edge bins extend to -inf and +inf.

    Args:
        x: data of any shape, values in [-1, 1].
        means: Gaussian means, same shape as x.
        log_scales: log standard deviations, same shape as x.

    Returns:
        Log-likelihoods in nats, same shape as x.
    """
    assert x.shape == means.shape == log_scales.shape, "x, means and log_scales must have one shape"
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))
