"""Image transforms of the classifier: resizing, the FDDM-style geometric augmentation (docs/PAPER.md §B1), [-1, 1]
scaling.

The paper does not say what "geometric aug" is; the default follows the FDDM list quoted in docs/PAPER.md §B1: rotation
in [0, 360) degrees, horizontal flip p = 0.5 (with the free rotation this also covers vertical flips), random crop
p = 0.4, zoom p = 0.5, brightness / contrast / colour (saturation) factors in [0.7, 1.3].
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image
from torchvision import transforms

from data.transforms import center_crop_arr

RESIZE_MODES: tuple[str, ...] = ("resize", "center_crop")


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of the geometric augmentation.

    Attributes:
        rotation: rotation angles are drawn uniformly from [0, rotation] degrees.
        flip_p: probability of a horizontal flip.
        crop_p: probability of a random crop, resized back to the input size.
        crop_scale: the crop keeps a random area fraction in [crop_scale, 1].
        zoom_p: probability of a zoom about the centre.
        zoom_range: the zoom factor is drawn from [1 - zoom_range, 1 + zoom_range].
        jitter: brightness, contrast and saturation factors are drawn from [1 - jitter, 1 + jitter].
    """

    rotation: float = 360.0
    flip_p: float = 0.5
    crop_p: float = 0.4
    crop_scale: float = 0.7
    zoom_p: float = 0.5
    zoom_range: float = 0.2
    jitter: float = 0.3


class ResizeRGB:
    """PIL (any size, any mode) -> RGB S x S: a plain bicubic resize or the ADM centre crop (picklable for workers)."""

    def __init__(self, image_size: int, resize: str = "resize") -> None:
        if resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {resize!r}; choose from {RESIZE_MODES}")
        self.image_size = image_size
        self.resize = resize

    def __call__(self, img: Image.Image) -> Image.Image:
        img = img.convert("RGB")
        if self.resize == "center_crop":
            return center_crop_arr(img, self.image_size)
        return img.resize((self.image_size, self.image_size), Image.BICUBIC)


def classifier_transform(image_size: int, augment: AugmentConfig | None, resize: str = "resize") -> transforms.Compose:
    """PIL image -> (3, S, S) float tensor in [-1, 1] (the FDDM normalisation of docs/PAPER.md §B1).

    Args:
        image_size: side S of the network input.
        augment: geometric augmentation parameters, or None for none (evaluation and the `noaug` condition).
        resize: "resize" (bicubic to S x S, FDDM) or "center_crop" (the reference's ADM crop, aspect kept).

    Returns:
        The transform; its randomness comes from torch's global generator (seeded per run and per worker).
    """
    steps: list = [ResizeRGB(image_size, resize)]
    if augment is not None:
        j = augment.jitter
        steps += [
            transforms.RandomRotation(degrees=(0.0, augment.rotation)),
            transforms.RandomHorizontalFlip(p=augment.flip_p),
            transforms.RandomApply(
                [transforms.RandomResizedCrop(image_size, scale=(augment.crop_scale, 1.0), antialias=True)],
                p=augment.crop_p,
            ),
            transforms.RandomApply(
                [transforms.RandomAffine(degrees=0.0, scale=(1 - augment.zoom_range, 1 + augment.zoom_range))],
                p=augment.zoom_p,
            ),
            transforms.ColorJitter(brightness=(1 - j, 1 + j), contrast=(1 - j, 1 + j), saturation=(1 - j, 1 + j)),
        ]
    steps += [transforms.ToTensor(), transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])]
    return transforms.Compose(steps)
