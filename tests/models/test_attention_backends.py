"""Local-attention implementations: hand-written backward, FlexAttention with exact borders, GeCA's fast paths."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

import models.geca
from infra import rng
from models import DiT_models
from models.cellular import flex_grid_local_attention, grid_local_attention, impulse_local_attention
from models.geca import LocalAttention

GRIDS = [(4, 4), (3, 5), (6, 2), (1, 1), (1, 4), (5, 1)]
# Uncompiled FlexAttention (the only kind that runs on CPU) warns that it is the slow reference implementation.
UNCOMPILED_FLEX = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def packed(n: int, height: int, width: int, heads: int, dim: int, generator, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, height, width, 3, heads, dim, generator=generator, dtype=dtype)


@pytest.mark.parametrize("height,width", GRIDS)
def test_grid_attention_equals_impulse_reference_forward_and_backward(generator, height, width):
    qkv = packed(2, height, width, 3, 8, generator)
    grad_out = torch.randn(2, height, width, 3, 8, generator=generator)
    results = []
    for fn in (lambda t: grid_local_attention(t, 0.4), lambda t: impulse_local_attention(t, 0.4)):
        leaf = qkv.clone().requires_grad_(True)
        out = fn(leaf)
        out.backward(grad_out)
        results.append((out.detach(), leaf.grad))
    (out, grad), (ref_out, ref_grad) = results
    assert (out - ref_out).abs().max() < 1e-5
    assert (grad - ref_grad).abs().max() < 1e-5


@pytest.mark.parametrize("height,width", [(3, 4), (1, 1), (2, 1)])
def test_grid_attention_gradcheck(generator, height, width):
    qkv = packed(1, height, width, 2, 3, generator, torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: grid_local_attention(t, 0.7), (qkv,))


def test_grid_attention_strided_input_and_reduced_precision(generator):
    # Any strides are accepted; bf16 inputs (autocast) keep their dtype, the softmax runs in float32.
    qkv = torch.randn(2, 3, 4, 3, 2, 16, generator=generator)[..., ::2]
    out = grid_local_attention(qkv)
    torch.testing.assert_close(out, impulse_local_attention(qkv.contiguous(), 8**-0.5), rtol=0, atol=1e-5)
    low = grid_local_attention(qkv.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), out, rtol=0.05, atol=0.05)  # bf16 has an 8-bit mantissa


def test_grid_attention_rejects_unpacked_input():
    with pytest.raises(ValueError, match="N, H, W, 3, heads, d"):
        grid_local_attention(torch.zeros(1, 4, 4, 2, 8))


@UNCOMPILED_FLEX
@pytest.mark.parametrize("height,width", GRIDS)
def test_flex_exact_borders_equal_slices_forward_cpu(generator, height, width):
    # Uncompiled FlexAttention runs forward on CPU: the zero-key construction is checked here; CUDA runs it fused.
    qkv = packed(2, height, width, 2, 8, generator)
    torch.testing.assert_close(
        flex_grid_local_attention(qkv, 0.4, compile=False), grid_local_attention(qkv, 0.4), rtol=0, atol=1e-5
    )


@UNCOMPILED_FLEX
def test_geca_backends_agree_in_eval(perturb, batch):
    slices = perturb(DiT_models["GeCA-T"](input_size=8, num_classes=11, in_channels=4, attention_backend="slices"))
    flex = DiT_models["GeCA-T"](input_size=8, num_classes=11, in_channels=4, attention_backend="flex")
    flex.load_state_dict(slices.state_dict())
    x, t, y = batch(2)
    with torch.no_grad():
        a = slices.eval()(x, t, y, generator=rng.sample_generators([0, 1]))
        b = flex.eval()(x, t, y, generator=rng.sample_generators([0, 1]))
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-4)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend"):
        LocalAttention(16, 2, 8, backend="cuda")


def test_no_grad_forward_updates_in_place_and_equals_grad_forward(perturb, batch):
    model = perturb(DiT_models["GeCA-T"](input_size=8, num_classes=11, in_channels=4)).eval()
    x, t, y = batch(2)
    extras = model.seed(x, generator=torch.Generator().manual_seed(0))
    extras_copy = extras.clone()
    with_grad = model(x, t, y, extras=extras, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), torch.profiler.profile() as prof:
        without = model(x, t, y, extras=extras, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(without[1], with_grad[1].detach(), rtol=0, atol=0)
    torch.testing.assert_close(extras, extras_copy, rtol=0, atol=0)  # the caller's state is not touched
    # The cell state is assembled once per forward (and the timestep features once), not once per step.
    cats = sum(e.count for e in prof.key_averages() if e.key == "aten::cat")
    assert cats < model.steps


@pytest.mark.gpu
@pytest.mark.parametrize("height,width", [(32, 32), (7, 5), (1, 1)])
def test_flex_equals_slices_forward_and_backward_cuda(height, width):
    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(2, height, width, 3, 12, 64, generator=g, device="cuda")
    grad_out = torch.randn(2, height, width, 12, 64, generator=g, device="cuda")
    results = []
    for fn in (grid_local_attention, flex_grid_local_attention):
        leaf = qkv.clone().requires_grad_(True)
        out = fn(leaf, 0.125)
        out.backward(grad_out)
        results.append((out.detach(), leaf.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=1e-4)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=1e-4)


@pytest.mark.gpu
def test_auto_backend_is_flex_on_cuda_and_matches(perturb, batch):
    calls = []

    def spy(qkv, scale=None):
        calls.append(qkv.shape)
        return flex_grid_local_attention(qkv, scale)

    model = DiT_models["GeCA-T"](input_size=8, num_classes=11, in_channels=4, attention_backend="auto")
    model = perturb(model).cuda().train()
    slices = DiT_models["GeCA-T"](input_size=8, num_classes=11, in_channels=4, attention_backend="slices")
    slices.load_state_dict(model.state_dict())
    slices.cuda().train()
    x, t, y = (v.cuda() for v in batch(2))
    states = []
    with mock.patch.object(models.geca, "flex_grid_local_attention", spy):
        for m in (model, slices):
            state = m(x, t, y, generator=rng.sample_generators([0, 1], "cuda"))
            state.square().mean().backward()
            states.append((state.detach(), m.cell_to_embedding.weight.grad))
    assert len(calls) == model.steps  # "auto" chose FlexAttention on CUDA, "slices" did not
    torch.testing.assert_close(states[0][0], states[1][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(states[0][1], states[1][1], rtol=1e-3, atol=1e-4)
