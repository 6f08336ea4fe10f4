"""Integration with the real tiny models: they fit a toy latent set, and GeCA sampling inherits its genes (GHG)."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion import create_diffusion
from infra import rng
from models import DiT_models

C, L, K = 4, 8, 11


def _toy_latents() -> tuple[torch.Tensor, torch.Tensor]:
    """8 fixed structured latents (sinusoids, a saddle, a checkerboard-like sign pattern) with 2-hot labels."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, L), torch.linspace(-1, 1, L), indexing="ij")
    latents, labels = [], torch.zeros(8, K)
    for i in range(8):
        f = (1 + i % 4) * math.pi
        sign = 1.0 if i < 4 else -1.0
        channels = [torch.sin(f * xx), torch.cos(f * yy), sign * xx * yy, torch.sign(torch.sin(f * (xx + yy)))]
        latents.append(0.8 * torch.stack(channels))
        labels[i, i] = labels[i, (i + 3) % K] = 1.0
    return torch.stack(latents), labels


def _fit(key: str, steps: int, batch: int, lr: float) -> list[float]:
    torch.manual_seed(0)
    model = DiT_models[key](input_size=L, num_classes=K, in_channels=C).train()
    diffusion = create_diffusion("")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0)
    data, labels = _toy_latents()
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=g)
        t = torch.randint(0, diffusion.num_timesteps, (batch,), generator=g)
        loss = diffusion.training_losses(model, data[idx], t, model_kwargs={"y": labels[idx]}, generator=g)["loss"]
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        losses.append(loss.mean().item())
    return losses


def test_dit_fits_toy_latents() -> None:
    losses = _fit("DiT-T/2", steps=200, batch=8, lr=1e-3)
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.7 * first, (first, last)


def test_geca_fits_toy_latents() -> None:
    # 80 steps rather than 200: 12 cellular steps per forward make GeCA-T ~8x slower than DiT-T/2 on CPU.
    losses = _fit("GeCA-T", steps=80, batch=4, lr=2e-3)
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.7 * first, (first, last)


def test_geca_cfg_sampling_inherits_hidden_genes(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = DiT_models["GeCA-T"](input_size=L, num_classes=K, in_channels=C).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # The zero-initialised layers would keep every update (and so every gene) at zero.
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.05, generator=g)
    n, out_ch = 2, 2 * C
    gens = rng.sample_generators([3, 4])
    z = rng.randn((n, C, L, L), gens)
    z = torch.cat([z, z])
    labels = torch.zeros(n, K)
    labels[0, 1] = labels[1, 5] = 1.0
    y = torch.cat([labels, torch.zeros_like(labels)])

    given, grown_from, returned = [], [], []
    inner_forward = model.forward

    def recording_forward(x, t, y, extras=None, **kwargs):
        grown_from.append(extras.clone())
        out, cells = inner_forward(x, t, y, extras=extras, **kwargs)
        returned.append(cells)
        return out, cells

    inner_cfg = model.forward_with_cfg

    def recording_cfg(x, t, y, cfg_scale, extras=None, **kwargs):
        given.append(extras)
        return inner_cfg(x, t, y, cfg_scale, extras=extras, **kwargs)

    monkeypatch.setattr(model, "forward", recording_forward)
    kwargs = {"y": y, "cfg_scale": 1.5, "extras": model.seed(z, generator=gens)}
    sample = create_diffusion("5").p_sample_loop(recording_cfg, z.shape, noise=z, model_kwargs=kwargs, generator=gens)

    assert sample.shape == (2 * n, C, L, L) and torch.isfinite(sample).all()
    assert len(returned) == 5
    centre = torch.zeros(L, L, dtype=torch.bool)
    centre[L // 2, L // 2] = True
    for k in range(4):
        prev = returned[k]
        assert given[k + 1] is prev  # the sampler threads the cells into the next step
        start = grown_from[k + 1]
        # GHG: hidden genes inherited from step k ...
        assert prev[:, out_ch:].abs().max() > 0
        assert torch.equal(start[:, out_ch:], prev[:, out_ch:])
        # ... output channels re-grown from a fresh single centre cell.
        assert start[:, :out_ch, ~centre].abs().max() == 0
        assert start[:, :out_ch, centre].abs().min() > 0
        assert not torch.allclose(start[:, :out_ch], prev[:, :out_ch])
