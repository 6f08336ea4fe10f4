"""The training loss's `Denoiser` protocol: what each registry model answers, and the loss it gives (issue 14).

The loss used to seed a cellular model itself (`model.seed(x_t)`, drawn right after eps from the same generator) and to
read GeCA's output channels [C, 3C) out of its full train-mode state. The protocol moved that knowledge into the
models; the tests below write the old computation out and require the same bits, loss and gradients.
"""

from __future__ import annotations

import pytest
import torch

from diffusion import create_diffusion
from diffusion.gaussian_diffusion import Denoiser
from infra import rng
from models import DiT_models

C, SIDE, CLASSES = 4, 8, 11
KEYS = ["GeCA-T", "DiT-T/2", "LDM-T"]


def tiny(key: str) -> torch.nn.Module:
    """A tiny model in train mode, weights moved off their (partly zero) initialisation so every path is active."""
    torch.manual_seed(0)
    model = DiT_models[key](input_size=SIDE, num_classes=CLASSES, in_channels=C)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model.train()


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, C, SIDE, SIDE, generator=g)
    y = (torch.rand(4, CLASSES, generator=g) < 0.3).float()
    return x, y


def grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("spec,options", [("", {}), ("250", {}), ("", {"use_kl": True})])
@pytest.mark.parametrize("key", KEYS)
def test_training_loss_equals_the_loss_written_out(key, spec, options):
    model = tiny(key)
    d = create_diffusion(spec, **options)
    x, y = inputs()
    t = torch.tensor([0, 10, d.num_timesteps // 2, d.num_timesteps - 1])
    got = d.training_losses(model, x, t, {"y": y}, generator=rng.sample_generators(range(4)))
    got["loss"].mean().backward()
    got_grads = grads(model)

    # The computation as the loss did it before the protocol: eps first, then GeCA's seed, from one generator.
    model.zero_grad(set_to_none=True)
    gens = rng.sample_generators(range(4))
    eps = rng.randn(x.shape, gens)
    x_t = d.q_sample(x, t, eps)
    t_model = d.original_timesteps(t)  # what the respacing wrapper passes
    if key.startswith("GeCA"):
        state = model(x_t, t_model, y, extras=model.seed(x_t, generator=gens), generator=gens)
        output = state[:, C : 3 * C]  # cell state: input [0, C), output [C, 3C), hidden after
    else:
        output = model(x_t, t_model, y, generator=gens)
    expected = d.training_losses(lambda *args, **kwargs: output, x, t, noise=eps)
    expected["loss"].mean().backward()

    for name in ("loss", "mse", "vb"):
        assert torch.equal(got[name], expected[name]), name
    assert torch.equal(got_grads, grads(model))
    # The MSE term against its formula, independently of the package.
    torch.testing.assert_close(got["mse"], ((eps - output[:, :C]) ** 2).mean(dim=(1, 2, 3)), rtol=0, atol=0)


@pytest.mark.parametrize("key", KEYS)
def test_models_answer_the_protocol(key):
    model = tiny(key)
    assert isinstance(model, Denoiser)
    x, _ = inputs()
    extras = model.initial_extras(x, generator=rng.sample_generators(range(4)))
    raw = torch.randn(4, 3 * C + 16 if key.startswith("GeCA") else 2 * C, SIDE, SIDE)
    if key.startswith("GeCA"):
        # The seed cell (hidden channels 0) and the output channels of the full state.
        assert torch.equal(extras, model.seed(x, generator=rng.sample_generators(range(4))))
        assert extras.shape == (4, 2 * C + model.hidden_channels, SIDE, SIDE)
        assert extras[:, 2 * C :].eq(0).all()
        assert torch.equal(model.training_prediction(raw, 2 * C), raw[:, C : 3 * C])
        assert torch.equal(model.training_prediction(raw, C), raw[:, C : 2 * C])  # fixed variance: eps only
    else:
        assert extras is None
        assert model.training_prediction(raw, 2 * C) is raw


@pytest.mark.parametrize("key", KEYS)
def test_the_loss_passes_extras_only_to_stateful_models(key):
    model = tiny(key)
    seen: list[dict] = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    x, y = inputs()
    t = torch.tensor([1, 2, 3, 4])
    create_diffusion("").training_losses(model, x, t, {"y": y}, generator=rng.sample_generators(range(4)))
    (kwargs,) = seen
    if key.startswith("GeCA"):
        gens = rng.sample_generators(range(4))
        x_t = create_diffusion("").q_sample(x, t, rng.randn(x.shape, gens))
        assert torch.equal(kwargs["extras"], model.seed(x_t, generator=gens))  # drawn right after eps
    else:
        assert "extras" not in kwargs
