"""DINOv2 ViT-B/14 CLS features (768-d) for the generalization gap, built with timm (docs/PAPER.md §B3 "Features",
docs/DECISIONS.md §C4).

The reference (fld's `DINOv2FeatureExtractor`) runs Meta's torch.hub `dinov2_vitb14` on 224 x 224 inputs. That model
keeps its position embedding at the 518-pixel grid (37 x 37 patches) and interpolates it at every forward pass to
the 16 x 16 grid of a 224 input (bicubic, scale factor (16 + 0.1) / 37, no antialiasing). Here the timm model is
built at 224 and that same interpolation is applied once, when the weights are loaded, so both compute the same
function. Weights come from timm's file (`timm/vit_base_patch14_dinov2.lvd142m` in the Hugging Face cache) or Meta's
original `dinov2_vitb14_pretrain.pth`; both store the 37 x 37 embedding and nearly the same parameter names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import nn
from torch.nn import functional as F
from torchvision import transforms

from metrics.features import WeightsNotFoundError, torch_hub_checkpoint

DINO_ARCH = "vit_base_patch14_dinov2"
DINO_HF_REPO = "timm/vit_base_patch14_dinov2.lvd142m"
DINO_HF_FILES = ("model.safetensors", "pytorch_model.bin")
DINO_META_FILE = "dinov2_vitb14_pretrain.pth"  # torch.hub's download name for Meta's weights
DINO_IMAGE_SIZE = 224
DINO_FEATURE_DIM = 768
# Meta's offset added to the target grid before interpolating, "to avoid floating point error" (dinov2 hub models).
DINO_INTERPOLATE_OFFSET = 0.1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dino_transform(image_size: int = DINO_IMAGE_SIZE) -> transforms.Compose:
    """fld's DINOv2 preprocessing: Resize (S, S) bicubic, CenterCrop S, ToTensor, ImageNet normalisation
    (docs/PAPER.md §B3)."""
    return transforms.Compose(
        [
            transforms.Resize((image_size, image_size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def interpolate_pos_embed_dinov2(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Meta DINOv2's run-time position-embedding interpolation, for a square input of `grid` x `grid` patches.

    Args:
        pos_embed: (1, 1 + M², D) embedding, class token first, patches on an M x M grid.
        grid: target patches per side G (224 // 14 = 16).

    Returns:
        (1, 1 + G², D) embedding in the input dtype; unchanged when G = M.
    """
    num_patches = pos_embed.shape[1] - 1
    side = int(math.sqrt(num_patches))
    if side == grid:
        return pos_embed
    dim = pos_embed.shape[-1]
    cls_pos, patch_pos = pos_embed[:, :1].float(), pos_embed[:, 1:].float()
    scale = float((grid + DINO_INTERPOLATE_OFFSET) / side)
    patch_pos = F.interpolate(
        patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2), scale_factor=(scale, scale), mode="bicubic"
    )  # (1, D, G, G)
    assert patch_pos.shape[-2:] == (grid, grid)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)  # (1, G², D)
    return torch.cat([cls_pos, patch_pos], dim=1).to(pos_embed.dtype)


def convert_dinov2_state_dict(state_dict: Mapping[str, torch.Tensor], grid: int) -> dict[str, torch.Tensor]:
    """Meta's or timm's DINOv2 weights -> a timm `vit_*_patch14_dinov2` built for `grid` x `grid` patches.

    Meta's names equal timm's except `mask_token` (unused at inference, dropped); SwiGLU variants' `mlp.w12`/`mlp.w3`
    become `mlp.fc1`/`mlp.fc2`. The position embedding is interpolated as Meta does at run time.

    Args:
        state_dict: parameter name -> tensor (a `{"model": ...}` wrapper is unwrapped).
        grid: patches per side of the target model.

    Returns:
        A state dict for `strict=True` loading.
    """
    state_dict = state_dict.get("model", state_dict)
    out = {}
    for key, value in state_dict.items():
        if key == "mask_token":
            continue
        out[key.replace("mlp.w12.", "mlp.fc1.").replace("mlp.w3.", "mlp.fc2.")] = value
    out["pos_embed"] = interpolate_pos_embed_dinov2(out["pos_embed"], grid)
    return out


def default_dino_weights() -> Path | None:
    """timm's file in the Hugging Face cache, else Meta's file in `$TORCH_HOME/hub/checkpoints`, else None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in DINO_HF_FILES:
        cached = try_to_load_from_cache(DINO_HF_REPO, filename)
        if isinstance(cached, str):
            return Path(cached)
    meta_file = torch_hub_checkpoint(DINO_META_FILE)
    return meta_file if meta_file.is_file() else None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file or of a `torch.save` file (loaded with `weights_only=True`)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_dino(
    weights: str | Path | None = None, device: str | torch.device = "cpu", arch: str = DINO_ARCH
) -> nn.Module:
    """The GG feature network: ImageNet-normalised (N, 3, 224, 224) -> (N, D) CLS embeddings after the final norm.

    Args:
        weights: timm or Meta DINOv2 weights file; None takes `default_dino_weights()`.
        device: where the module lives.
        arch: timm architecture (the reference's ViT-B/14 by default; other DINOv2 sizes take their own weights).

    Returns:
        The timm model in eval mode (attribute `weights_file` records the file used).

    Raises:
        WeightsNotFoundError: no weights file (never downloads, never uses random weights).
    """
    path = Path(weights) if weights is not None else default_dino_weights()
    if path is None or not path.is_file():
        expected = [str(path)] if path is not None else [f"the Hugging Face cache entry {DINO_HF_REPO}"]
        if path is None:
            expected.append(str(torch_hub_checkpoint(DINO_META_FILE)))
        raise WeightsNotFoundError("DINOv2 ViT-B/14 weights", expected, "--dino-weights")
    model = timm.create_model(arch, pretrained=False, img_size=DINO_IMAGE_SIZE, num_classes=0, global_pool="token")
    grid = DINO_IMAGE_SIZE // model.patch_embed.patch_size[0]
    model.load_state_dict(convert_dinov2_state_dict(read_state_dict(path), grid), strict=True)
    model.weights_file = str(path)
    return model.eval().requires_grad_(False).to(device)
