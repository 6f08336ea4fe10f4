"""Forward process, posterior, learned variance and the training loss, against formulas written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from diffusion import create_diffusion
from diffusion.gaussian_diffusion import extract
from infra import rng

N, C, H, W = 3, 4, 8, 8


def _abar(k: int) -> float:
    """abar_k of the linear 1000-step schedule, as an independent product."""
    return math.prod(1.0 - (1e-4 + (0.02 - 1e-4) * j / 999) for j in range(k + 1))


def _beta(k: int) -> float:
    return 1e-4 + (0.02 - 1e-4) * k / 999


def _posterior(x0: np.ndarray, xt: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Mean and variance of q(x_{k-1} | x_k, x_0), DDPM eq. 7, for k >= 1."""
    abar, abar_prev, beta = _abar(k), _abar(k - 1), _beta(k)
    mean = beta * math.sqrt(abar_prev) / (1 - abar) * x0 + (1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar) * xt
    return mean, beta * (1 - abar_prev) / (1 - abar)


def test_extract_broadcasts_and_casts() -> None:
    table = torch.tensor([0.5, 1.5, 2.5], dtype=torch.float64)
    x = torch.zeros(2, 3, 4, 4, dtype=torch.float16)
    out = extract(table, torch.tensor([2, 0]), x)
    assert out.shape == x.shape and out.dtype == torch.float16
    assert out[0].eq(2.5).all() and out[1].eq(0.5).all()


def test_q_sample_closed_form(generator: torch.Generator) -> None:
    d = create_diffusion("")
    x0 = torch.randn(N, C, H, W, generator=generator, dtype=torch.float64)
    eps = torch.randn(N, C, H, W, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 321, 999])
    xt = d.q_sample(x0, t, eps)
    for i, k in enumerate(t.tolist()):
        expected = math.sqrt(_abar(k)) * x0[i] + math.sqrt(1 - _abar(k)) * eps[i]
        torch.testing.assert_close(xt[i], expected, rtol=1e-10, atol=1e-10)


def test_posterior_against_formula(generator: torch.Generator) -> None:
    d = create_diffusion("")
    x0 = torch.randn(N, C, H, W, generator=generator, dtype=torch.float64)
    xt = torch.randn(N, C, H, W, generator=generator, dtype=torch.float64)
    t = torch.tensor([1, 250, 999])
    mean, var, log_var = d.q_posterior_mean_variance(x0, xt, t)
    for i, k in enumerate(t.tolist()):
        exp_mean, exp_var = _posterior(x0[i].numpy(), xt[i].numpy(), k)
        np.testing.assert_allclose(mean[i].numpy(), exp_mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(var[i].numpy(), exp_var, rtol=1e-9)
        np.testing.assert_allclose(log_var[i].numpy(), math.log(exp_var), rtol=1e-9)


def test_posterior_of_noiseless_q_sample_and_perfect_eps(generator: torch.Generator) -> None:
    d = create_diffusion("250")
    x0 = torch.randn(N, C, H, W, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 100, 249])
    # coef1 + coef2 sqrt(abar_t) = sqrt(abar_{t-1}): the posterior mean at a noiseless x_t is sqrt(abar_{t-1}) x_0.
    mean, _, _ = d.q_posterior_mean_variance(x0, d.q_sample(x0, t, torch.zeros_like(x0)), t)
    abar_prev = torch.from_numpy(d.tables.alphas_cumprod_prev[t.numpy()]).view(-1, 1, 1, 1)
    torch.testing.assert_close(mean, abar_prev.sqrt() * x0)
    # The true eps recovers x_0 and the true posterior mean.
    eps = torch.randn(N, C, H, W, generator=generator, dtype=torch.float64)
    xt = d.q_sample(x0, t, eps)
    out = d.p_mean_variance_from_output(torch.cat([eps, torch.zeros_like(eps)], 1), xt, t)
    torch.testing.assert_close(out["pred_xstart"], x0)
    torch.testing.assert_close(out["mean"], d.q_posterior_mean_variance(x0, xt, t)[0])


def test_learned_range_endpoints() -> None:
    d = create_diffusion("")
    x = torch.zeros(2, C, H, W, dtype=torch.float64)
    t = torch.tensor([0, 500])
    ones = torch.ones_like(x)
    low = d.p_mean_variance_from_output(torch.cat([x, -ones], 1), x, t)["log_variance"]
    high = d.p_mean_variance_from_output(torch.cat([x, ones], 1), x, t)["log_variance"]
    # v = -1 gives log beta_tilde (clipped: beta_tilde_1 at t = 0), v = +1 gives log beta.
    assert torch.allclose(low[0], torch.tensor(math.log(_posterior(0, 0, 1)[1]), dtype=torch.float64))
    assert torch.allclose(low[1], torch.tensor(math.log(_posterior(0, 0, 500)[1]), dtype=torch.float64))
    assert torch.allclose(high[0], torch.tensor(math.log(_beta(0)), dtype=torch.float64))
    assert torch.allclose(high[1], torch.tensor(math.log(_beta(500)), dtype=torch.float64))
    mid = d.p_mean_variance_from_output(torch.cat([x, torch.zeros_like(x)], 1), x, t)["log_variance"]
    torch.testing.assert_close(mid, (low + high) / 2)


def _fixed_output_model(output: torch.Tensor):
    return lambda x, t, **kwargs: output


def _decoder_nll_bits(x0: np.ndarray, mean: np.ndarray, log_var: np.ndarray) -> float:
    """-log p(x_0 | x_1) with the reference's tanh CDF, averaged over dimensions, in bits."""

    def cdf(z: np.ndarray) -> np.ndarray:
        return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (z + 0.044715 * z**3)))

    s = np.exp(0.5 * log_var)
    upper, lower = cdf((x0 - mean + 1 / 255) / s), cdf((x0 - mean - 1 / 255) / s)
    p = np.where(x0 < -0.999, upper, np.where(x0 > 0.999, 1 - lower, upper - lower))
    return float(np.mean(-np.log(np.maximum(p, 1e-12))) / np.log(2.0))


def test_vb_terms_against_formulas(generator: torch.Generator) -> None:
    d = create_diffusion("")
    x0 = torch.rand(2, C, H, W, generator=generator, dtype=torch.float64) * 2 - 1
    x0[0, 0, 0, 0], x0[0, 0, 0, 1] = -1.0, 1.0  # the open edge bins
    eps = torch.randn(2, C, H, W, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 400])
    xt = d.q_sample(x0, t, eps)
    eps_hat = eps + 0.1 * torch.randn(2, C, H, W, generator=generator, dtype=torch.float64)
    v = torch.rand(2, C, H, W, generator=generator, dtype=torch.float64) * 2 - 1
    out = d.training_losses(_fixed_output_model(torch.cat([eps_hat, v], 1)), x0, t, noise=eps)

    x0n, xtn, ehn, vn = x0.numpy(), xt.numpy(), eps_hat.numpy(), v.numpy()
    vb = []
    for i, k in enumerate(t.tolist()):
        pred_x0 = (xtn[i] - math.sqrt(1 - _abar(k)) * ehn[i]) / math.sqrt(_abar(k))
        log_var = (vn[i] + 1) / 2 * math.log(_beta(k)) + (1 - vn[i]) / 2 * math.log(_posterior(0, 0, max(k, 1))[1])
        if k == 0:
            # abar_{-1} = 1, so the model mean at t = 0 is its x_0 prediction.
            vb.append(_decoder_nll_bits(x0n[i], pred_x0, log_var))
        else:
            q_mean, q_var = _posterior(x0n[i], xtn[i], k)
            p_mean, _ = _posterior(pred_x0, xtn[i], k)
            kl = 0.5 * (
                -1 + log_var - math.log(q_var) + q_var / np.exp(log_var) + (q_mean - p_mean) ** 2 / np.exp(log_var)
            )
            vb.append(float(np.mean(kl) / np.log(2.0)))
    np.testing.assert_allclose(out["vb"].numpy(), vb, rtol=1e-7)
    np.testing.assert_allclose(out["mse"].numpy(), ((eps - eps_hat) ** 2).mean(dim=(1, 2, 3)).numpy(), rtol=1e-12)
    torch.testing.assert_close(out["loss"], out["mse"] + out["vb"])


def test_vb_trains_only_variance_and_mse_only_mean(generator: torch.Generator) -> None:
    d = create_diffusion("")
    x0 = torch.randn(N, C, H, W, generator=generator)
    t = torch.tensor([0, 10, 700])
    output = nn.Parameter(torch.randn(N, 2 * C, H, W, generator=generator))
    losses = d.training_losses(_fixed_output_model(output), x0, t, generator=generator)
    (grad_vb,) = torch.autograd.grad(losses["vb"].sum(), output, retain_graph=True)
    assert grad_vb[:, :C].abs().max() == 0 and grad_vb[:, C:].abs().max() > 0
    (grad_mse,) = torch.autograd.grad(losses["mse"].sum(), output)
    assert grad_mse[:, C:].abs().max() == 0 and grad_mse[:, :C].abs().max() > 0


def test_training_noise_from_generator() -> None:
    d = create_diffusion("")
    x0 = torch.zeros(2, C, H, W)
    t = torch.tensor([999, 999])
    recorded = []

    def model(x, t, **kwargs):
        recorded.append((x, kwargs))
        return torch.zeros(x.shape[0], 2 * C, H, W)

    d.training_losses(model, x0, t, generator=rng.sample_generators([5, 6]))
    d.training_losses(model, x0, t, generator=rng.sample_generators([5, 6]))
    torch.testing.assert_close(recorded[0][0], recorded[1][0])
    expected = math.sqrt(1 - _abar(999)) * rng.randn((2, C, H, W), rng.sample_generators([5, 6]))
    torch.testing.assert_close(recorded[0][0], expected)
    assert "generator" in recorded[0][1] and "extras" not in recorded[0][1]


class _TinyCellular(nn.Module):
    """Stand-in cellular model: state (input C | output 2C | hidden), one 1x1 update, records its calls.

    It answers the loss's `Denoiser` protocol as GeCA does: a seed cell as initial extras, the prediction read from
    the output channels [C, 3C) of its full train-mode state.
    """

    def __init__(self, hidden: int = 3) -> None:
        super().__init__()
        self.update = nn.Conv2d(3 * C + hidden, 2 * C + hidden, 1)
        self.hidden = hidden
        self.seeds: list[torch.Tensor] = []
        self.calls: list[tuple[torch.Tensor, torch.Tensor, dict]] = []

    def initial_extras(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        n, _, h, w = x.shape
        state = torch.zeros(n, 2 * C + self.hidden, h, w, dtype=x.dtype)
        state[:, : 2 * C, h // 2, w // 2] = rng.randn((n, 2 * C), generator, x.device, x.dtype)
        self.seeds.append(state)
        return state

    def training_prediction(self, output: torch.Tensor, channels: int) -> torch.Tensor:
        return output[:, C : C + channels]

    def forward(self, x, t, y=None, extras=None, generator=None):
        self.calls.append((x, t, {"extras": extras, "generator": generator}))
        cells = extras + self.update(torch.cat([x, extras], 1))
        if self.training:
            return torch.cat([x, cells], 1)
        return cells[:, : 2 * C], cells


def test_cellular_training_seeds_and_slices(generator: torch.Generator) -> None:
    d = create_diffusion("250")
    bare = _TinyCellular().train()
    wrapped = nn.DataParallel(bare)  # a wrapper the loss must look through (no GPU: it calls the module)
    x0 = torch.randn(2, C, H, W, generator=generator)
    eps = torch.randn(2, C, H, W, generator=generator)
    t = torch.tensor([0, 249])
    y = torch.zeros(2, 11)
    kwargs = {"y": y}
    out = d.training_losses(wrapped, x0, t, model_kwargs=kwargs, noise=eps, generator=rng.sample_generators([1, 2]))
    assert kwargs == {"y": y}  # the caller's dict is not modified
    x_in, t_in, kw = bare.calls[0]
    torch.testing.assert_close(x_in, d.q_sample(x0, t, eps))
    assert t_in.tolist() == [0, 999]  # original timesteps under respacing
    seed = bare.seeds[0]
    assert kw["extras"] is seed and seed[:, 2 * C :].eq(0).all()  # fresh seed, hidden genes 0
    assert seed[:, : 2 * C].count_nonzero() == 2 * 2 * C  # only the centre cell of each sample
    # The loss reads output channels [C, 3C) of the full state.
    full = torch.cat([x_in, seed + bare.update(torch.cat([x_in, seed], 1))], 1)
    ref = d.training_losses(_fixed_output_model(full[:, C : 3 * C]), x0, t, noise=eps)
    for key in ("loss", "mse", "vb"):
        torch.testing.assert_close(out[key], ref[key])
    out["loss"].mean().backward()
    assert bare.update.weight.grad is not None


def test_fixed_variance_and_kl_losses(generator: torch.Generator) -> None:
    x0 = torch.randn(2, C, H, W, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 500])
    eps_hat = torch.zeros(2, C, H, W, dtype=torch.float64)
    large = create_diffusion("", learn_sigma=False)
    small = create_diffusion("", learn_sigma=False, sigma_small=True)
    out = large.training_losses(_fixed_output_model(eps_hat), x0, t, generator=generator)
    assert out["vb"].eq(0).all()
    torch.testing.assert_close(out["loss"], out["mse"])
    # FIXED_LARGE: beta_t, with beta_tilde_1 at t = 0; FIXED_SMALL: beta_tilde_t.
    log_large = large.p_mean_variance_from_output(eps_hat, x0, t)["log_variance"][:, 0, 0, 0]
    log_small = small.p_mean_variance_from_output(eps_hat, x0, t)["log_variance"][:, 0, 0, 0]
    np.testing.assert_allclose(log_large.numpy(), np.log([_posterior(0, 0, 1)[1], _beta(500)]), rtol=1e-9)
    np.testing.assert_allclose(log_small.numpy(), np.log([_posterior(0, 0, 1)[1], _posterior(0, 0, 500)[1]]), rtol=1e-9)
    # use_kl: the loss is the VB term times T, with gradients reaching the eps channels too.
    eps = torch.randn(2, C, H, W, generator=generator, dtype=torch.float64)
    output = nn.Parameter(torch.randn(2, 2 * C, H, W, generator=generator, dtype=torch.float64))
    out_kl = create_diffusion("", use_kl=True).training_losses(_fixed_output_model(output), x0, t, noise=eps)
    hybrid = create_diffusion("").training_losses(_fixed_output_model(output), x0, t, noise=eps)
    torch.testing.assert_close(out_kl["loss"], hybrid["vb"] * 1000)
    (grad,) = torch.autograd.grad(out_kl["loss"].sum(), output)
    assert grad[:, :C].abs().max() > 0 and grad[:, C:].abs().max() > 0


def test_rescaled_learned_sigmas_scale_vb(generator: torch.Generator) -> None:
    x0 = torch.randn(2, C, H, W, generator=generator, dtype=torch.float64)
    t = torch.tensor([3, 200])
    output = torch.randn(2, 2 * C, H, W, generator=generator, dtype=torch.float64)
    eps = torch.randn(2, C, H, W, generator=generator, dtype=torch.float64)
    plain = create_diffusion("", diffusion_steps=500)
    scaled = create_diffusion("", diffusion_steps=500, rescale_learned_sigmas=True)
    a = plain.training_losses(_fixed_output_model(output), x0, t, noise=eps)
    b = scaled.training_losses(_fixed_output_model(output), x0, t, noise=eps)
    torch.testing.assert_close(b["vb"], a["vb"] * 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_input(dtype: torch.dtype, generator: torch.Generator) -> None:
    d = create_diffusion("")
    x0 = torch.randn(2, C, H, W, generator=generator).to(dtype)
    out = d.training_losses(_fixed_output_model(torch.zeros(2, 2 * C, H, W, dtype=dtype)), x0, torch.tensor([1, 2]))
    assert out["loss"].dtype == dtype
