"""Batched feature extraction over image files and the per-image-set cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from metrics.dino import IMAGENET_MEAN, IMAGENET_STD, dino_transform
from metrics.features import cached_features, extract_features, file_image_set, pil_to_uint8


def write_pngs(folder, sizes, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def mean_colour(x: torch.Tensor) -> torch.Tensor:
    """Stand-in extractor: (N, 3, H, W) uint8 -> (N, 3) mean colour."""
    return x.float().mean(dim=(2, 3))


def test_extraction_keeps_order_and_handles_mixed_sizes(tmp_path):
    paths = write_pngs(tmp_path, [(8, 8), (8, 8), (6, 10), (8, 8), (8, 8)])
    images = file_image_set("generated", paths)
    feats = extract_features(images, mean_colour, pil_to_uint8, batch_size=3)
    expected = torch.stack([mean_colour(pil_to_uint8(Image.open(p).convert("RGB"))[None])[0] for p in paths])
    torch.testing.assert_close(feats, expected)


def test_real_images_are_centre_cropped(tmp_path):
    paths = write_pngs(tmp_path, [(12, 20)])
    images = file_image_set("real_val", paths, image_size=8)
    assert images.load(0).size == (8, 8)
    assert file_image_set("real_val", paths, image_size=8).identity != file_image_set("real_val", paths).identity


def test_whole_images_through_the_dino_transform_are_resized_not_cropped(tmp_path):
    # GG's real images (image_size None) reach the DINOv2 preprocessing whole: a non-square image is squeezed to
    # 224 x 224 by one bicubic resize (docs/REFERENCE.md §9.3); the KID crop gives a different input.
    halves = np.zeros((24, 48, 3), dtype=np.uint8)
    halves[:, 24:] = 200  # right half bright
    paths = [tmp_path / "wide.png"]
    Image.fromarray(halves).save(paths[0])
    images = file_image_set("real_train", paths)
    assert images.load(0).size == (48, 24)
    x = dino_transform()(images.load(0))  # (3, 224, 224), ImageNet-normalised
    expected = Image.fromarray(halves).resize((224, 224), Image.BICUBIC)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    unnormalised = (x * std + mean) * 255
    torch.testing.assert_close(
        unnormalised, torch.from_numpy(np.asarray(expected)).permute(2, 0, 1).float(), atol=1e-3, rtol=0
    )
    cropped = dino_transform()(file_image_set("real_train", paths, image_size=16).load(0))
    assert not torch.allclose(cropped, x)


def test_missing_image_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        file_image_set("generated", [tmp_path / "nope.png"])


def test_cache_hits_and_invalidates_on_file_change(tmp_path):
    paths = write_pngs(tmp_path / "img", [(8, 8)] * 3)
    calls = []

    def compute():
        calls.append(1)
        return extract_features(file_image_set("generated", paths), mean_colour, pil_to_uint8)

    first = cached_features(file_image_set("generated", paths), "mean:v1", compute, tmp_path / "cache")
    again = cached_features(file_image_set("generated", paths), "mean:v1", compute, tmp_path / "cache")
    assert len(calls) == 1
    torch.testing.assert_close(first, again)
    cached_features(file_image_set("generated", paths), "mean:v2", compute, tmp_path / "cache")
    assert len(calls) == 2  # another extractor (or weights file) is another entry
    write_pngs(tmp_path / "img", [(8, 8)] * 3, seed=1)
    stat = os.stat(paths[0])
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = cached_features(file_image_set("generated", paths), "mean:v1", compute, tmp_path / "cache")
    assert len(calls) == 3
    assert not torch.equal(first, changed)
