"""Samplers: determinism, per-sample noise, threading of the cell state (GHG), original timesteps, DDIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from diffusion import create_diffusion
from infra import rng

C, H, W = 4, 8, 8


class _TinyEps(nn.Module):
    """Deterministic elementwise stand-in (so exactly batch-invariant): eps = 0.5 tanh(a_c x), v = tanh(x)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, C).view(1, C, 1, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.cat([0.5 * torch.tanh(self.scale * x), torch.tanh(x)], 1)


class _Recorder:
    """Stand-in cellular model: returns (output, new extras) and records what it receives each step."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.returned: list[torch.Tensor] = []
        self.timesteps: list[list[int]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, extras: torch.Tensor | None = None, **kwargs):
        self.received.append({"extras": extras, **kwargs})
        self.timesteps.append(t.tolist())
        new = (extras if extras is not None else torch.zeros_like(x)) + len(self.returned) + 1
        self.returned.append(new)
        return torch.zeros(x.shape[0], 2 * C, H, W), new


def test_same_seed_same_sample_different_seed_differs() -> None:
    d = create_diffusion("10")
    model = _TinyEps()
    a = d.p_sample_loop(model, (2, C, H, W), generator=torch.Generator().manual_seed(1))
    b = d.p_sample_loop(model, (2, C, H, W), generator=torch.Generator().manual_seed(1))
    c = d.p_sample_loop(model, (2, C, H, W), generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.isfinite(a).all()


@pytest.mark.parametrize("loop", ["p_sample_loop", "ddim_sample_loop"])
def test_per_sample_generators_batch_independent(loop: str) -> None:
    d = create_diffusion("10")
    model = _TinyEps()
    kwargs = {"eta": 0.5} if loop == "ddim_sample_loop" else {}
    pair = getattr(d, loop)(model, (2, C, H, W), generator=rng.sample_generators([11, 12]), **kwargs)
    alone = getattr(d, loop)(model, (1, C, H, W), generator=rng.sample_generators([12]), **kwargs)
    assert torch.equal(pair[1:], alone)
    assert not torch.allclose(pair[0], pair[1])


@pytest.mark.parametrize("loop", ["p_sample_loop_progressive", "ddim_sample_loop_progressive"])
def test_extras_threaded_between_steps(loop: str) -> None:
    d = create_diffusion("5")
    model = _Recorder()
    initial = torch.full((2, 3, H, W), 0.5)
    kwargs = {"y": torch.ones(2, 11), "extras": initial}
    gen = torch.Generator().manual_seed(0)
    steps = list(getattr(d, loop)(model, (2, C, H, W), model_kwargs=kwargs, generator=gen))
    assert len(steps) == 5 and set(steps[0]) == {"sample", "pred_xstart", "extras"}
    assert model.received[0]["extras"] is initial
    for k in range(4):
        # step k's returned cell state is exactly what step k+1 receives
        assert model.received[k + 1]["extras"] is model.returned[k]
        assert steps[k]["extras"] is model.returned[k]
    assert all(r["generator"] is gen and torch.equal(r["y"], kwargs["y"]) for r in model.received)
    assert kwargs["extras"] is initial and set(kwargs) == {"y", "extras"}  # the caller's dict is left alone
    # The model sees the ORIGINAL timesteps of the respaced process, from the last to 0.
    assert [ts[0] for ts in model.timesteps] == [999, 749, 500, 250, 0]
    assert all(len(set(ts)) == 1 for ts in model.timesteps)


def test_no_generator_kwarg_without_generator() -> None:
    model = _Recorder()
    create_diffusion("3").p_sample_loop(model, (1, C, H, W))
    assert all("generator" not in r for r in model.received)


def test_original_timesteps_under_respacing_250() -> None:
    d = create_diffusion("250")
    model = _Recorder()
    d.p_sample_loop(model, (1, C, H, W), generator=torch.Generator().manual_seed(0))
    seen = [ts[0] for ts in model.timesteps]
    assert seen == [round(k * 999 / 249) for k in range(249, -1, -1)]


def test_tensor_returning_model_keeps_initial_extras() -> None:
    seen = []

    def model(x, t, extras=None, **kwargs):
        seen.append(extras)
        return torch.zeros(x.shape[0], 2 * C, H, W)

    marker = torch.ones(1)
    steps = list(create_diffusion("3").p_sample_loop_progressive(model, (1, C, H, W), model_kwargs={"extras": marker}))
    assert all(e is marker for e in seen) and all(s["extras"] is None for s in steps)


def _oracle(target: torch.Tensor):
    """The exact eps of a point-mass data distribution at `target`, using original timesteps (abar of T = 1000)."""
    abar = torch.from_numpy(create_diffusion("").tables.alphas_cumprod)

    def model(x, t, **kwargs):
        a = abar[t].to(x.dtype).view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * target) / (1 - a).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], 1)

    return model


@pytest.mark.parametrize("respacing", ["ddim10", "25"])
def test_samplers_recover_point_mass(respacing: str, generator: torch.Generator) -> None:
    target = torch.rand(2, C, H, W, generator=generator, dtype=torch.float64) * 2 - 1
    d = create_diffusion(respacing)
    noise = torch.randn(2, C, H, W, generator=generator, dtype=torch.float64)
    ddim = d.ddim_sample_loop(_oracle(target), (2, C, H, W), noise=noise)
    torch.testing.assert_close(ddim, target, rtol=0, atol=1e-9)
    ancestral = d.p_sample_loop(_oracle(target), (2, C, H, W), noise=noise, generator=generator)
    torch.testing.assert_close(ancestral, target, rtol=0, atol=1e-9)


def test_ddim_eta_zero_is_deterministic_and_eta_one_uses_noise() -> None:
    d = create_diffusion("ddim10")
    model = _TinyEps()
    noise = torch.randn(2, C, H, W, generator=torch.Generator().manual_seed(3))
    a = d.ddim_sample_loop(model, (2, C, H, W), noise=noise, generator=torch.Generator().manual_seed(1))
    b = d.ddim_sample_loop(model, (2, C, H, W), noise=noise, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c = d.ddim_sample_loop(model, (2, C, H, W), noise=noise, eta=1.0, generator=torch.Generator().manual_seed(1))
    e = d.ddim_sample_loop(model, (2, C, H, W), noise=noise, eta=1.0, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(c, e)


def test_ancestral_step_variance(generator: torch.Generator) -> None:
    # x_{t-1} = mu + sigma z at t > 0 and mu alone at t = 0 (DDPM Algorithm 2).
    d = create_diffusion("")
    x = torch.zeros(2, C, 32, 32, dtype=torch.float64)
    out = torch.cat([torch.zeros_like(x), torch.ones_like(x)], 1)  # eps 0, v = +1: variance beta_t
    t = torch.tensor([0, 999])
    step = d.p_sample(lambda x, t, **kw: out, x, t, generator=generator)
    assert step["sample"][0].abs().max() == 0
    assert step["sample"][1].std().item() == pytest.approx(math.sqrt(0.02), rel=0.1)


def test_bad_shapes_are_rejected() -> None:
    d = create_diffusion("3")
    with pytest.raises(ValueError, match="noise has shape"):
        d.p_sample_loop(_TinyEps(), (2, C, H, W), noise=torch.zeros(1, C, H, W))
    with pytest.raises(ValueError, match="output has 4 channels"):
        d.training_losses(lambda x, t, **kw: x, torch.zeros(1, C, H, W), torch.tensor([1]))


# ----- fresh-seed sampling (inherit_state=False, the --no-ghg ablation) --------------------------------------------


@pytest.mark.parametrize("loop", ["p_sample_loop_progressive", "ddim_sample_loop_progressive"])
def test_inherit_state_false_passes_no_extras(loop: str) -> None:
    d = create_diffusion("4")
    model = _Recorder()
    kwargs = {"y": torch.ones(2, 11)}
    steps = list(getattr(d, loop)(model, (2, C, H, W), model_kwargs=kwargs, inherit_state=False))
    assert len(model.received) == 4
    # No step receives a cell state, so a cellular model seeds itself every step; the states it returns still
    # come back to the caller.
    assert all(r["extras"] is None for r in model.received)
    assert all(s["extras"] is r for s, r in zip(steps, model.returned))
    assert set(kwargs) == {"y"}
    with pytest.raises(ValueError, match="must not hold an initial 'extras'"):
        list(getattr(d, loop)(model, (2, C, H, W), model_kwargs={"extras": torch.zeros(1)}, inherit_state=False))


def _active_geca() -> nn.Module:
    """GeCA-T on an 8 x 8 grid with its zero-initialised layers drawn N(0, 0.01^2), so genes and updates are active."""
    from models import DiT_models

    model = DiT_models["GeCA-T"](input_size=H, num_classes=11, in_channels=C).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.01, generator=g)
    return model


def _fresh_seed_ddpm_by_hand(
    model: nn.Module, z: torch.Tensor, labels: torch.Tensor, cfg_scale: float, steps: int, seeds: list[int]
) -> torch.Tensor:
    """Fresh-seed ancestral sampling written out from the formulas, independent of the diffusion package.

    Every step calls the network once on a new single-cell seed (hidden channels 0) from the images' own generators,
    guides eps by hand, and forms x_{t-1} from the respaced linear schedule (DDPM eq. 6-7, IDDPM eq. 15) in
    float64 coefficients. Per generator the draws follow the sampler's order: seed cell, update masks, step noise.
    """
    gens = rng.sample_generators(seeds)
    n = len(labels)
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    abar_all = np.cumprod(1.0 - betas)
    kept = [round(k * 999 / (steps - 1)) for k in range(steps)]  # "N" respacing of 1000 steps, N <= 1000
    abar = abar_all[kept]
    abar_prev = np.append(1.0, abar[:-1])
    beta = 1.0 - abar / abar_prev
    post_var = beta * (1.0 - abar_prev) / (1.0 - abar)
    log_post = np.log(np.append(post_var[1], post_var[1:]))
    guided = cfg_scale > 1.0
    x = torch.cat([z, z]) if guided else z.clone()
    y = torch.cat([labels, torch.zeros_like(labels)]) if guided else labels
    for i in range(steps - 1, -1, -1):
        t = torch.full((len(x),), kept[i], dtype=torch.long)
        start = torch.cat([x[:n], x[:n]]) if guided else x
        out, _ = model.forward(start, t, y, extras=model.seed(start, generator=gens), generator=gens)
        eps, v = out[:, :C], out[:, C:]
        if guided:
            eps_c, eps_u = eps[:n], eps[n:]
            eps = torch.cat([eps_u + cfg_scale * (eps_c - eps_u)] * 2)
        x0 = math.sqrt(1.0 / abar[i]) * x - math.sqrt(1.0 / abar[i] - 1.0) * eps
        coef1 = beta[i] * math.sqrt(abar_prev[i]) / (1.0 - abar[i])
        coef2 = (1.0 - abar_prev[i]) * math.sqrt(1.0 - beta[i]) / (1.0 - abar[i])
        mean = coef1 * x0 + coef2 * x
        frac = (v + 1.0) / 2.0
        log_var = frac * math.log(beta[i]) + (1.0 - frac) * log_post[i]
        noise = rng.randn(x.shape, gens)
        x = mean + (1.0 if i > 0 else 0.0) * torch.exp(0.5 * log_var) * noise
    return x[:n]


@pytest.mark.parametrize("cfg_scale", [1.0, 1.5])
def test_fresh_seed_sampling_of_geca_equals_a_hand_written_loop(cfg_scale: float) -> None:
    model = _active_geca()
    seeds, steps = [5, 6], 4
    labels = torch.zeros(2, 11)
    labels[0, 2] = labels[1, 7] = labels[1, 9] = 1.0
    z = rng.randn((2, C, H, W), rng.sample_generators([100, 101]))
    fn = model.forward_with_cfg if cfg_scale > 1 else model.forward
    kwargs = {"y": torch.cat([labels, torch.zeros_like(labels)]), "cfg_scale": cfg_scale} if cfg_scale > 1 else {}
    kwargs = kwargs or {"y": labels}
    noise = torch.cat([z, z]) if cfg_scale > 1 else z
    gens = rng.sample_generators(seeds)
    got = create_diffusion(str(steps)).p_sample_loop(
        fn, noise.shape, noise=noise, model_kwargs=kwargs, generator=gens, inherit_state=False
    )[:2]
    want = _fresh_seed_ddpm_by_hand(model, z, labels, cfg_scale, steps, seeds)
    # float32 network, coefficients cast from float64 in a different order: rounding only.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("cfg_scale", [1.0, 1.5])
def test_fresh_seed_sampling_differs_from_ghg_and_is_batch_invariant(cfg_scale: float) -> None:
    model = _active_geca()
    d = create_diffusion("4")
    labels = torch.zeros(3, 11)
    labels[:, 1] = 1.0
    labels[2, 4] = 1.0

    def sample(rows: list[int], ghg: bool) -> torch.Tensor:
        gens = rng.sample_generators([40 + r for r in rows])
        z = rng.randn((len(rows), C, H, W), gens)
        y = labels[rows]
        fn, kwargs = model.forward, {"y": y}
        if cfg_scale > 1:
            z, fn = torch.cat([z, z]), model.forward_with_cfg
            kwargs = {"y": torch.cat([y, torch.zeros_like(y)]), "cfg_scale": cfg_scale}
        if ghg:
            kwargs["extras"] = model.seed(z, generator=gens)
        out = d.p_sample_loop(fn, z.shape, noise=z, model_kwargs=kwargs, generator=gens, inherit_state=ghg)
        return out[: len(rows)]

    fresh = sample([0, 1, 2], ghg=False)
    torch.testing.assert_close(sample([0, 1, 2], ghg=False), fresh, rtol=0, atol=0)  # deterministic
    # Batch-invariant up to float32 rounding of other GEMM shapes (an untrained net: values of a few hundred).
    torch.testing.assert_close(sample([2], ghg=False), fresh[2:], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(sample([1, 0], ghg=False), fresh[[1, 0]], rtol=1e-4, atol=1e-3)
    heredity = sample([0, 1, 2], ghg=True)
    assert (heredity - fresh).abs().amax(dim=(1, 2, 3)).min() > 1.0  # every image changes
