"""DINOv2 GG features (docs/PAPER.md §B3, docs/DECISIONS.md §C4): Meta-layout weights load into timm and compute Meta's
224-px forward."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from PIL import Image
from torch.nn import functional as F

from metrics.dino import DINO_IMAGE_SIZE, convert_dinov2_state_dict, dino_transform, load_dino
from metrics.features import WeightsNotFoundError

TINY = {"depth": 1}  # one block of ViT-S/14: enough to exercise every parameter name


def meta_style_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What Meta's hub model does on a 224 input: interpolate its 37 x 37 position grid at run time
    (bicubic, scale factor (16 + 0.1) / 37, no antialiasing), then blocks, final norm, CLS token."""
    tokens = model.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (N, 256, D); Meta's patch embed has no size check
    tokens = torch.cat([model.cls_token.expand(len(x), -1, -1), tokens], dim=1)
    pos = model.pos_embed
    side, dim, grid = int(math.sqrt(pos.shape[1] - 1)), pos.shape[-1], x.shape[-1] // 14
    patch = pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, scale_factor=((grid + 0.1) / side, (grid + 0.1) / side), mode="bicubic")
    pos = torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)], dim=1)
    tokens = model.blocks(tokens + pos)
    return model.norm(tokens)[:, 0]


def random_meta_checkpoint(**kwargs) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A randomly initialised 518-px DINOv2 and its weights in Meta's layout (with the training-only mask token)."""
    source = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, **kwargs).eval()
    with torch.no_grad():
        source.pos_embed.normal_(std=0.5)  # a position grid worth interpolating
    state = {k: v.clone() for k, v in source.state_dict().items()}
    state["mask_token"] = torch.zeros(1, source.embed_dim)
    return source, state


def test_meta_weights_reproduce_meta_forward_at_224(generator):
    source, meta_state = random_meta_checkpoint(**TINY)
    assert meta_state["pos_embed"].shape[1] == 1 + 37 * 37
    target = timm.create_model(
        "vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=DINO_IMAGE_SIZE, **TINY
    ).eval()
    target.load_state_dict(convert_dinov2_state_dict(meta_state, grid=16), strict=True)
    x = torch.randn(2, 3, DINO_IMAGE_SIZE, DINO_IMAGE_SIZE, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(target(x), meta_style_forward(source, x), rtol=1e-5, atol=1e-5)


def test_swiglu_names_are_mapped():
    state = {"mlp.w12.weight": torch.ones(1), "blocks.0.mlp.w3.bias": torch.ones(1), "pos_embed": torch.ones(1, 5, 2)}
    out = convert_dinov2_state_dict(state, grid=2)
    assert set(out) == {"mlp.fc1.weight", "blocks.0.mlp.fc2.bias", "pos_embed"}


@pytest.mark.slow
def test_load_dino_reads_a_meta_file(tmp_path, generator):
    source, meta_state = random_meta_checkpoint()
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(meta_state, path)
    model = load_dino(path, arch="vit_small_patch14_dinov2")
    x = torch.randn(1, 3, DINO_IMAGE_SIZE, DINO_IMAGE_SIZE, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(model(x), meta_style_forward(source, x), rtol=1e-4, atol=1e-4)
    assert model.weights_file == str(path)


def test_missing_weights_name_the_file_and_the_flag(tmp_path):
    missing = tmp_path / "dinov2_vitb14_pretrain.pth"
    with pytest.raises(WeightsNotFoundError) as err:
        load_dino(missing)
    assert str(missing) in str(err.value)
    assert "--dino-weights" in str(err.value)


def test_transform_is_resize_crop_and_imagenet_normalisation():
    image = Image.new("RGB", (64, 48), (124, 116, 104))  # about the ImageNet mean colour
    x = dino_transform()(image)
    assert x.shape == (3, DINO_IMAGE_SIZE, DINO_IMAGE_SIZE)
    assert x.abs().max() < 0.02
