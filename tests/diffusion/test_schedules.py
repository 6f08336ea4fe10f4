"""Beta schedules, derived tables and respacing, checked against closed forms written here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffusion import create_diffusion
from diffusion.respace import respaced_betas, space_timesteps
from diffusion.schedules import cosine_beta_schedule, diffusion_tables, linear_beta_schedule, named_beta_schedule


def test_linear_schedule_values() -> None:
    betas = linear_beta_schedule(1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    # DDPM: beta_1 = 1e-4 ... beta_T = 0.02, linearly spaced (closed form).
    assert betas[0] == pytest.approx(1e-4, abs=1e-15)
    assert betas[999] == pytest.approx(0.02, abs=1e-15)
    assert betas[500] == pytest.approx(1e-4 + 500 * (0.02 - 1e-4) / 999, rel=1e-12)
    # Scaled by 1000 / T for other lengths (IDDPM).
    short = linear_beta_schedule(500)
    assert short[0] == pytest.approx(2e-4, rel=1e-12) and short[-1] == pytest.approx(0.04, rel=1e-12)


def test_alphas_cumprod_closed_form() -> None:
    tables = diffusion_tables(linear_beta_schedule(1000))
    # Independent product in plain Python floats; docs/REFERENCE.md §5.1 quotes abar_999 ~ 4.04e-5.
    expected = math.prod(1.0 - (1e-4 + (0.02 - 1e-4) * k / 999) for k in range(1000))
    assert tables.alphas_cumprod[999] == pytest.approx(expected, rel=1e-10)
    assert tables.alphas_cumprod[999] == pytest.approx(4.04e-5, rel=2e-3)
    assert tables.alphas_cumprod[0] == pytest.approx(1 - 1e-4, rel=1e-14)
    assert tables.alphas_cumprod_prev[0] == 1.0
    assert tables.alphas_cumprod_prev[10] == tables.alphas_cumprod[9]


def test_posterior_tables_closed_form() -> None:
    t = diffusion_tables(linear_beta_schedule(1000))
    for k in (1, 37, 500, 999):
        beta, abar, abar_prev = t.betas[k], t.alphas_cumprod[k], t.alphas_cumprod[k - 1]
        # DDPM eq. 7.
        var = beta * (1 - abar_prev) / (1 - abar)
        assert t.posterior_variance[k] == pytest.approx(var, rel=1e-12)
        assert t.posterior_log_variance_clipped[k] == pytest.approx(math.log(var), rel=1e-12)
        assert t.posterior_mean_coef1[k] == pytest.approx(beta * math.sqrt(abar_prev) / (1 - abar), rel=1e-12)
        assert t.posterior_mean_coef2[k] == pytest.approx((1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar), rel=1e-12)
        assert t.sqrt_recipm1_alphas_cumprod[k] == pytest.approx(math.sqrt(1 / abar - 1), rel=1e-12)
    # beta_tilde_0 = 0; its log is clipped to log beta_tilde_1 (reference behaviour).
    assert t.posterior_variance[0] == 0.0
    assert t.posterior_log_variance_clipped[0] == t.posterior_log_variance_clipped[1]


def test_cosine_schedule() -> None:
    betas = named_beta_schedule("squaredcos_cap_v2", 1000)
    assert np.array_equal(betas, cosine_beta_schedule(1000))
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731  (IDDPM eq. 17)
    abar = np.cumprod(1 - betas)
    for k in (0, 100, 500, 900):
        assert abar[k] == pytest.approx(f((k + 1) / 1000) / f(0), rel=1e-9)
    assert betas.max() <= 0.999 and betas[-1] == 0.999
    with pytest.raises(ValueError, match="unknown beta schedule"):
        named_beta_schedule("quadratic", 10)


def _reference_spacing(size: int, count: int) -> list[int]:
    """The reference's accumulation: cur_idx starts at 0 and grows by (size-1)/(count-1), rounded each step."""
    stride, cur, out = (size - 1) / (count - 1), 0.0, []
    for _ in range(count):
        out.append(round(cur))
        cur += stride
    return out


def test_space_timesteps_250() -> None:
    steps = sorted(space_timesteps(1000, "250"))
    formula = [round(k * 999 / 249) for k in range(250)]
    assert steps == formula == _reference_spacing(1000, 250)
    assert len(set(formula)) == 250
    assert steps[:3] == [0, 4, 8] and steps[-2:] == [995, 999]
    assert {160, 164, 169} <= set(steps) and 168 not in steps


def test_space_timesteps_sections_and_ddim() -> None:
    assert sorted(space_timesteps(1000, "ddim50")) == list(range(0, 1000, 20))
    assert sorted(space_timesteps(1000, "ddim250")) == list(range(0, 1000, 4))
    # The documented example: 300 steps, sections of 10, 15 and 20.
    steps = sorted(space_timesteps(300, [10, 15, 20]))
    assert steps[:10] == _reference_spacing(100, 10)
    assert steps[10:25] == [100 + s for s in _reference_spacing(100, 15)]
    assert steps[25:] == [200 + s for s in _reference_spacing(100, 20)]
    # An exact .5 tie (k * 9/4 = 4.5) rounds half to even, like the reference's Python round.
    assert sorted(space_timesteps(10, "5")) == [0, 2, 4, 7, 9]
    # Uneven sections: the first of 10 = 4 + 3 + 3 steps gets the extra one.
    assert sorted(space_timesteps(10, "2,2,2")) == [0, 3, 4, 6, 7, 9]
    assert space_timesteps(1000, "1") == {0}
    with pytest.raises(ValueError):
        space_timesteps(10, "11")
    with pytest.raises(ValueError):
        space_timesteps(1000, "ddim999")


def test_respaced_betas_preserve_alphas_cumprod() -> None:
    base = diffusion_tables(linear_beta_schedule(1000))
    kept = sorted(space_timesteps(1000, "250"))
    betas, timestep_map = respaced_betas(base.alphas_cumprod, kept)
    assert timestep_map.tolist() == kept
    new = diffusion_tables(betas)
    np.testing.assert_allclose(new.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12)
    # beta'_i = 1 - abar_{s_i} / abar_{s_{i-1}} with abar before the first kept step = 1.
    assert betas[0] == pytest.approx(1 - base.alphas_cumprod[0], rel=1e-12)
    assert betas[42] == pytest.approx(1 - base.alphas_cumprod[kept[42]] / base.alphas_cumprod[kept[41]], rel=1e-12)


def test_create_diffusion_respacing() -> None:
    full = create_diffusion("")
    assert full.num_timesteps == 1000 and full.timestep_map.tolist() == list(range(1000))
    # Respacing to every step recomputes the betas from abar, equal up to float64 rounding (as the reference).
    np.testing.assert_allclose(full.tables.betas, linear_beta_schedule(1000), rtol=1e-11)
    assert create_diffusion(None).num_timesteps == 1000
    assert create_diffusion("250").num_timesteps == 250
    ddim = create_diffusion("ddim50")
    assert ddim.timestep_map.tolist() == list(range(0, 1000, 20))
