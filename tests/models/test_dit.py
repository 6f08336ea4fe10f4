"""DiT baseline: reference parameter layout, fixed position table, label dropout, guidance, checkpointing."""

from __future__ import annotations

import math

import pytest
import torch

from infra import rng
from models import DiT_models

CLASSES, CHANNELS = 11, 4


def tiny(**kw):
    return DiT_models["DiT-T/2"](input_size=8, num_classes=CLASSES, in_channels=CHANNELS, **kw)


def test_state_dict_equals_reference_layout():
    # docs/REFERENCE.md §7: DiT-S/2, 11 classes, 32x32x4 latents.
    with torch.device("meta"):
        model = DiT_models["DiT-S/2"](input_size=32, num_classes=CLASSES, in_channels=CHANNELS)
    expected = {
        "pos_embed": (1, 256, 384),
        "x_embedder.proj.weight": (384, 4, 2, 2),
        "x_embedder.proj.bias": (384,),
        "t_embedder.mlp.0.weight": (384, 256),
        "t_embedder.mlp.0.bias": (384,),
        "t_embedder.mlp.2.weight": (384, 384),
        "t_embedder.mlp.2.bias": (384,),
        "y_embedder.embedding_table.0.weight": (384, 11),
        "y_embedder.embedding_table.0.bias": (384,),
        "y_embedder.embedding_table.1.weight": (384, 384),
        "y_embedder.embedding_table.1.bias": (384,),
        "final_layer.linear.weight": (32, 384),
        "final_layer.linear.bias": (32,),
        "final_layer.adaLN_modulation.1.weight": (768, 384),
        "final_layer.adaLN_modulation.1.bias": (768,),
    }
    for n in range(12):
        expected |= {
            f"blocks.{n}.attn.qkv.weight": (1152, 384),
            f"blocks.{n}.attn.qkv.bias": (1152,),
            f"blocks.{n}.attn.proj.weight": (384, 384),
            f"blocks.{n}.attn.proj.bias": (384,),
            f"blocks.{n}.mlp.fc1.weight": (1536, 384),
            f"blocks.{n}.mlp.fc1.bias": (1536,),
            f"blocks.{n}.mlp.fc2.weight": (384, 1536),
            f"blocks.{n}.mlp.fc2.bias": (384,),
            f"blocks.{n}.adaLN_modulation.1.weight": (2304, 384),
            f"blocks.{n}.adaLN_modulation.1.bias": (2304,),
        }
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert not model.pos_embed.requires_grad


def test_pos_embed_is_the_mae_sincos_table():
    # Independent evaluation of the MAE/DiT formula: first half encodes the column, second half the row;
    # within each half [sin(p w_i), cos(p w_i)], w_i = 10000^(-i / (D/4)).
    model = tiny()
    dim, grid = 64, 4
    table = model.pos_embed[0]
    for token in (0, 5, 15):
        row, col = divmod(token, grid)
        for i in (0, 3, 7):
            w = 10000 ** (-i / (dim / 4))
            assert abs(table[token, i].item() - math.sin(col * w)) < 1e-6
            assert abs(table[token, dim // 4 + i].item() - math.cos(col * w)) < 1e-6
            assert abs(table[token, dim // 2 + i].item() - math.sin(row * w)) < 1e-6
            assert abs(table[token, 3 * dim // 4 + i].item() - math.cos(row * w)) < 1e-6


def test_zero_init_gives_zero_output(batch):
    x, t, y = batch(2)
    torch.testing.assert_close(tiny().eval()(x, t, y), torch.zeros(2, 8, 8, 8), rtol=0, atol=0)


def test_label_dropout_only_in_training(batch, perturb):
    model = perturb(tiny())
    x, t, _ = batch(4)
    ones, zeros = torch.ones(4, CLASSES), torch.zeros(4, CLASSES)
    evaluated = model.eval()(x, t, ones)
    torch.testing.assert_close(model(x, t, ones), evaluated, rtol=0, atol=0)
    model.train()
    assert not torch.allclose(model(x, t, ones, generator=torch.Generator().manual_seed(0)), evaluated)
    # Dropping entries of the null label changes nothing: training differs from eval only through label dropout.
    torch.testing.assert_close(model(x, t, zeros), model.eval()(x, t, zeros), rtol=0, atol=0)


def test_forward_with_cfg_guides_only_epsilon(batch, perturb):
    model = perturb(tiny()).eval()
    x, t, y = batch(2)
    x2 = torch.cat([x, torch.randn_like(x)])  # the second half of x is ignored
    t2, y2 = torch.cat([t, t]), torch.cat([y, torch.zeros_like(y)])
    guided = model.forward_with_cfg(x2, t2, y2, 3.0)
    raw = model(torch.cat([x, x]), t2, y2)
    torch.testing.assert_close(guided[:, CHANNELS:], raw[:, CHANNELS:], rtol=0, atol=0)
    eps_c, eps_u = raw[:2, :CHANNELS], raw[2:, :CHANNELS]
    torch.testing.assert_close(guided[:2, :CHANNELS], eps_u + 3.0 * (eps_c - eps_u))
    torch.testing.assert_close(guided[2:, :CHANNELS], guided[:2, :CHANNELS], rtol=0, atol=0)


def test_grad_checkpoint_gives_same_gradients(batch, perturb):
    plain = perturb(tiny()).train()
    chk = tiny(grad_checkpoint=True).train()
    chk.load_state_dict(plain.state_dict())
    x, t, y = batch(2)
    grads = []
    for model in (plain, chk):
        model(x, t, y, generator=rng.sample_generators([0, 1])).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("kwargs", [{"extras": torch.zeros(1)}, {"multi_scale": True}])
def test_forward_ignores_cellular_arguments(batch, perturb, kwargs):
    model = perturb(tiny()).eval()
    x, t, y = batch(2)
    torch.testing.assert_close(model(x, t, y, **kwargs), model(x, t, y), rtol=0, atol=0)


def test_bf16_autocast_keeps_the_token_stream_float32(batch, perturb):
    # DiT adds its float32 positional table (a frozen parameter) to the patch embedding, as the reference does, so
    # under autocast the tokens between blocks are float32 while the blocks' linear layers compute in bfloat16.
    model = perturb(tiny()).eval()
    seen = {"embed": set(), "qkv": set(), "block in": set(), "block out": set()}

    def record(key_in: str | None, key_out: str):
        def hook(_module, inputs, output):  # returns None: the output is left as it is
            if key_in is not None:
                seen[key_in].add(inputs[0].dtype)
            seen[key_out].add(output.dtype)

        return hook

    handles = [
        model.x_embedder.register_forward_hook(record(None, "embed")),
        model.blocks[0].attn.qkv.register_forward_hook(record(None, "qkv")),
    ]
    handles += [block.register_forward_hook(record("block in", "block out")) for block in model.blocks]
    x, t, y = batch(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, y)
    for h in handles:
        h.remove()
    assert seen["embed"] == seen["qkv"] == {torch.bfloat16}  # autocast is on inside the forward
    assert seen["block in"] == seen["block out"] == {torch.float32}
    assert out.shape == (2, 2 * CHANNELS, 8, 8)
