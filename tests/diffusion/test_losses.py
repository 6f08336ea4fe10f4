"""Pure likelihood functions of diffusion/losses.py and the timestep samplers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion.losses import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, mean_flat, normal_kl
from diffusion.timestep_sampler import LossSecondMomentResampler, UniformSampler, create_named_schedule_sampler


def test_mean_flat() -> None:
    x = torch.arange(24.0).view(2, 3, 4)
    torch.testing.assert_close(mean_flat(x), torch.tensor([5.5, 17.5]))


def test_normal_kl_closed_form(generator: torch.Generator) -> None:
    m1, m2 = torch.randn(5, generator=generator), torch.randn(5, generator=generator)
    lv1, lv2 = torch.randn(5, generator=generator), torch.randn(5, generator=generator)
    # KL of univariate Gaussians: log(s2/s1) + (s1^2 + (m1-m2)^2) / (2 s2^2) - 1/2.
    s1, s2 = torch.exp(0.5 * lv1), torch.exp(0.5 * lv2)
    expected = torch.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected)
    assert torch.all(normal_kl(m1, lv1, m1, lv1).abs() < 1e-6)


def test_approx_cdf_close_to_exact() -> None:
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    exact = torch.special.ndtr(x)
    assert (approx_standard_normal_cdf(x) - exact).abs().max() < 2e-4
    assert approx_standard_normal_cdf(torch.tensor(0.0)) == 0.5


def test_discretized_likelihood_bins_sum_to_one() -> None:
    # The 256 bins of [-1, 1] tile the real line (edge bins open), so their probabilities telescope to 1.
    x = -1.0 + 2.0 * torch.arange(256, dtype=torch.float64) / 255.0
    for mean, log_scale in ((0.0, -2.0), (0.3, -4.0), (-0.9, 0.5)):
        means = torch.full_like(x, mean)
        log_scales = torch.full_like(x, log_scale)
        total = discretized_gaussian_log_likelihood(x, means, log_scales).exp().sum()
        assert total.item() == pytest.approx(1.0, abs=1e-9)


def test_discretized_likelihood_formula() -> None:
    x = torch.tensor([-1.0, -0.2, 0.4, 1.0], dtype=torch.float64)
    means = torch.tensor([-0.9, -0.1, 0.5, 0.8], dtype=torch.float64)
    log_scales = torch.tensor([-1.0, -2.0, -3.0, -1.5], dtype=torch.float64)

    def cdf(z: float) -> float:
        return 0.5 * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))

    expected = []
    for xi, mi, li in zip(x.tolist(), means.tolist(), log_scales.tolist()):
        s = math.exp(li)
        upper, lower = cdf((xi - mi + 1 / 255) / s), cdf((xi - mi - 1 / 255) / s)
        p = upper if xi == -1.0 else (1 - lower if xi == 1.0 else upper - lower)
        expected.append(math.log(p))
    torch.testing.assert_close(
        discretized_gaussian_log_likelihood(x, means, log_scales), torch.tensor(expected).double()
    )


def test_uniform_sampler(generator: torch.Generator) -> None:
    t, w = UniformSampler(10).sample(64, "cpu", generator=generator)
    assert t.shape == w.shape == (64,) and t.dtype == torch.int64
    assert t.min() >= 0 and t.max() < 10
    torch.testing.assert_close(w, torch.ones(64))


def test_loss_second_moment_resampler(generator: torch.Generator) -> None:
    sampler = create_named_schedule_sampler("loss-second-moment", 4)
    assert isinstance(sampler, LossSecondMomentResampler)
    np.testing.assert_array_equal(sampler.weights(), np.ones(4))
    for _ in range(10):
        sampler.update_with_local_losses(torch.arange(4), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    # Warmed up: p_t = (1 - u) sqrt(E[L_t^2]) / sum + u / T with u = 0.001.
    expected = 0.999 * np.array([1, 2, 3, 4]) / 10 + 0.001 / 4
    np.testing.assert_allclose(sampler.weights(), expected, rtol=1e-12)
    sampler.update_with_all_losses([0], [5.0])  # the oldest loss of t = 0 is dropped
    assert sampler.loss_history[0, -1] == 5.0 and sampler.loss_history[0, 0] == 1.0
    t, w = sampler.sample(8, "cpu", generator=generator)
    p = sampler.weights() / sampler.weights().sum()
    np.testing.assert_allclose(w.numpy(), 1.0 / (4 * p[t.numpy()]), rtol=1e-6)
    with pytest.raises(ValueError):
        create_named_schedule_sampler("nope", 4)
