"""Classifier transforms: sizes, [-1, 1] range, seeded augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from downstream.augment import AugmentConfig, classifier_transform


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(20, 30), dtype=np.uint8))  # grey, non-square


@pytest.mark.parametrize("resize", ["resize", "center_crop"])
def test_eval_transform_shape_and_range(resize):
    x = classifier_transform(16, None, resize)(_image())
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    # Without augmentation the transform is deterministic.
    torch.testing.assert_close(x, classifier_transform(16, None, resize)(_image()), rtol=0, atol=0)


def test_geometric_augmentation_is_random_but_seeded():
    tf = classifier_transform(16, AugmentConfig())
    torch.manual_seed(1)
    a = tf(_image())
    torch.manual_seed(1)
    b = tf(_image())
    c = tf(_image())
    assert a.shape == (3, 16, 16) and a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_unknown_resize_mode():
    with pytest.raises(ValueError, match="resize"):
        classifier_transform(16, None, "stretch")
