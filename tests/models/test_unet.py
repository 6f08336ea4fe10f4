"""LDM-B baseline on diffusers' UNet2DModel: architecture of docs/DECISIONS.md §C3, label conditioning, guidance."""

from __future__ import annotations

import torch

from models import DiT_models

CLASSES, CHANNELS = 11, 4


def tiny():
    return DiT_models["LDM-T"](input_size=8, num_classes=CLASSES, in_channels=CHANNELS)


def test_ldm_b_architecture():
    with torch.device("meta"):
        model = DiT_models["LDM-B"](input_size=32, num_classes=CLASSES, in_channels=CHANNELS)
    config = model.unet.config
    assert tuple(config.block_out_channels) == (64, 128, 256, 256)
    assert config.layers_per_block == 1 and config.attention_head_dim == 32 and config.sample_size == 32
    assert tuple(config.down_block_types) == ("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
    assert tuple(config.up_block_types) == ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D")
    assert (config.in_channels, config.out_channels) == (4, 8)
    assert tuple(model.y_embedder.weight.shape) == (256, CLASSES)  # into the 4 x 64 time embedding


def test_labels_condition_the_output(batch):
    model = tiny().eval()
    x, t, y = batch(2)
    assert not torch.allclose(model(x, t, y), model(x, t, torch.zeros_like(y)))


def test_label_dropout_only_in_training(batch):
    model = tiny()
    x, t, _ = batch(4)
    ones, zeros = torch.ones(4, CLASSES), torch.zeros(4, CLASSES)
    evaluated = model.eval()(x, t, ones)
    torch.testing.assert_close(model(x, t, ones), evaluated, rtol=0, atol=0)
    model.train()
    assert not torch.allclose(model(x, t, ones, generator=torch.Generator().manual_seed(0)), evaluated)
    torch.testing.assert_close(model(x, t, zeros), model.eval()(x, t, zeros), rtol=0, atol=0)


def test_forward_with_cfg_guides_only_epsilon(batch):
    model = tiny().eval()
    x, t, y = batch(2)
    x2, t2, y2 = torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.zeros_like(y)])
    guided = model.forward_with_cfg(x2, t2, y2, 2.0)
    raw = model(x2, t2, y2)
    torch.testing.assert_close(guided[:, CHANNELS:], raw[:, CHANNELS:], rtol=0, atol=0)
    eps_c, eps_u = raw[:2, :CHANNELS], raw[2:, :CHANNELS]
    torch.testing.assert_close(guided[:2, :CHANNELS], eps_u + 2.0 * (eps_c - eps_u))
