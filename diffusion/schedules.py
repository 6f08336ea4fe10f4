"""Beta schedules and the per-timestep tables of a Gaussian diffusion, all in float64 (pure functions).

The reference (IDDPM/DiT) builds every table in float64 NumPy and casts to the working dtype only when a
coefficient is looked up for a batch; these functions keep that precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def linear_beta_schedule(num_steps: int) -> np.ndarray:
    """The DDPM linear schedule, scaled so that any T gives the same total noise as T = 1000.

    Ho et al. 2020 use beta from 1e-4 to 0.02 over 1000 steps; IDDPM multiplies both ends by 1000 / T.

    Args:
        num_steps: number of diffusion steps T.

    Returns:
        betas, float64 array of shape (T,).
    """
    scale = 1000.0 / num_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)


def betas_for_alpha_bar(num_steps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999) -> np.ndarray:
    """Discretise a continuous cumulative-signal function into betas (IDDPM, Nichol & Dhariwal 2021, eq. 17).

    Args:
        num_steps: number of diffusion steps T.
        alpha_bar: maps t in [0, 1] to the fraction of signal left, decreasing from 1.
        max_beta: upper clip of each beta, avoiding a singularity at t = 1.

    Returns:
        betas, float64 array of shape (T,) with beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta).
    """
    betas = [min(1.0 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    return np.array(betas, dtype=np.float64)


def cosine_beta_schedule(num_steps: int) -> np.ndarray:
    """The IDDPM cosine schedule ("squaredcos_cap_v2"): abar(t) = cos^2(((t + 0.008) / 1.008) * pi / 2).

    Args:
        num_steps: number of diffusion steps T.

    Returns:
        betas, float64 array of shape (T,).
    """
    return betas_for_alpha_bar(num_steps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)


def named_beta_schedule(name: str, num_steps: int) -> np.ndarray:
    """The betas of a schedule by name: "linear" (used by GeCA) or "squaredcos_cap_v2" (cosine, unused).

    Args:
        name: schedule name.
        num_steps: number of diffusion steps T.

    Returns:
        betas, float64 array of shape (T,).

    Raises:
        ValueError: for an unknown name.
    """
    if name == "linear":
        return linear_beta_schedule(num_steps)
    if name == "squaredcos_cap_v2":
        return cosine_beta_schedule(num_steps)
    raise ValueError(f"unknown beta schedule: {name!r} (expected 'linear' or 'squaredcos_cap_v2')")


@dataclass(frozen=True)
class DiffusionTables:
    """Per-timestep constants of the forward process and its posterior, each a float64 array of shape (T,).

    Attributes:
        betas: beta_t.
        alphas_cumprod: abar_t = prod_{s<=t} (1 - beta_s).
        alphas_cumprod_prev: abar_{t-1}, with abar_{-1} = 1.
        sqrt_alphas_cumprod: sqrt(abar_t), the signal coefficient of q(x_t | x_0).
        sqrt_one_minus_alphas_cumprod: sqrt(1 - abar_t), the noise coefficient of q(x_t | x_0).
        sqrt_recip_alphas_cumprod: sqrt(1 / abar_t), for x_0 from (x_t, eps).
        sqrt_recipm1_alphas_cumprod: sqrt(1 / abar_t - 1), for x_0 from (x_t, eps).
        posterior_variance: beta_tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t) (DDPM eq. 7).
        posterior_log_variance_clipped: log beta_tilde_t with beta_tilde_0 (= 0) replaced by beta_tilde_1.
        posterior_mean_coef1: coefficient of x_0 in the posterior mean (DDPM eq. 7).
        posterior_mean_coef2: coefficient of x_t in the posterior mean (DDPM eq. 7).
    """

    betas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray


def diffusion_tables(betas: np.ndarray) -> DiffusionTables:
    """All per-timestep tables of the process defined by `betas`, in float64.

    Args:
        betas: array of shape (T,), every value in (0, 1].

    Returns:
        The tables, each of shape (T,).
    """
    betas = np.asarray(betas, dtype=np.float64)
    assert betas.ndim == 1 and (betas > 0).all() and (betas <= 1).all(), "betas must be a 1-D array in (0, 1]"
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    # beta_tilde_0 is 0, whose log is -inf; the reference clips it to beta_tilde_1. A 1-step process has no
    # beta_tilde_1, so its only (zero) entry is kept and the log is left at -inf.
    post_var_for_log = np.append(post_var[1], post_var[1:]) if len(post_var) > 1 else post_var
    with np.errstate(divide="ignore"):
        post_log_var = np.log(post_var_for_log)
    return DiffusionTables(
        betas=betas,
        alphas_cumprod=abar,
        alphas_cumprod_prev=abar_prev,
        sqrt_alphas_cumprod=np.sqrt(abar),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - abar),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / abar),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / abar - 1.0),
        posterior_variance=post_var,
        posterior_log_variance_clipped=post_log_var,
        posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
        posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
    )
