"""Image pre-processing of the reference (docs/REFERENCE.md §2.3): ADM centre crop, [-1, 1] normalisation, uint8
conversion."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import transforms


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM-style centre crop (docs/REFERENCE.md §2.3).

    Halve with BOX resampling while the shorter side is at least twice `image_size`, resize the shorter side to
    `image_size` with BICUBIC, then take the central square.

    Args:
        pil_image: input image (any size, any mode PIL can resize).
        image_size: side S of the output.

    Returns:
        An S x S PIL image of the same mode.
    """
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size])


def image_transform(image_size: int, flip: bool = False) -> transforms.Compose:
    """PIL image -> (3, S, S) float tensor in [-1, 1]: centre crop, optional p=0.5 flip, ToTensor, Normalize(0.5, 0.5).

    The flip is the reference's once-per-image flip at feature extraction (docs/REFERENCE.md §2.3).
    """
    steps: list = [transforms.Lambda(lambda img: center_crop_arr(img.convert("RGB"), image_size))]
    if flip:
        steps.append(transforms.RandomHorizontalFlip(p=0.5))
    steps += [transforms.ToTensor(), transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], inplace=True)]
    return transforms.Compose(steps)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> uint8 by clamp(127.5 x + 128, 0, 255) and a truncating cast (DiT's rule, docs/REFERENCE.md §3).

    The project uses this one rule for real and generated images alike (docs/DECISIONS.md §C2.6).

    Args:
        x: (N, C, H, W) float tensor in about [-1, 1].

    Returns:
        (N, C, H, W) uint8 tensor.
    """
    return torch.clamp(127.5 * x + 128.0, 0, 255).to(torch.uint8)
