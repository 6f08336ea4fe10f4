"""Classifier construction and the offline ImageNet-weight lookup."""

from __future__ import annotations

import pytest
import torch
from torchvision import models

from downstream.classifier import build_classifier, find_pretrained
from infra.errors import UserError


def test_tiny_output_shape():
    model = build_classifier("tiny", 11)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 11)


def test_resnet_loads_imagenet_trunk_and_replaces_head(tmp_path):
    # A stand-in "ImageNet" file: a randomly initialised torchvision ResNet-18 with its 1000-way head.
    reference = models.resnet18(weights=None)
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), hub / "checkpoints" / "resnet18-f37072fd.pth")
    (hub / "checkpoints" / "resnet18-00000000.pth").write_bytes(b"")  # another cached file, not chosen
    path = find_pretrained("resnet18", "auto", hub_dir=hub)
    assert path.name == "resnet18-f37072fd.pth"  # torchvision's IMAGENET1K_V1 file is preferred
    model = build_classifier("resnet18", 5, path)
    torch.testing.assert_close(model.conv1.weight, reference.conv1.weight, rtol=0, atol=0)
    assert model.fc.out_features == 5
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_lookup_rules(tmp_path):
    # Nothing cached: the run stops naming the file, never random weights in its place (docs/DECISIONS.md §C4).
    with pytest.raises(UserError, match=r"no ImageNet weights for --arch resnet50 in .*resnet50-0676ba61.pth there"):
        find_pretrained("resnet50", "auto", hub_dir=tmp_path)
    assert find_pretrained("resnet50", "none") is None
    assert find_pretrained("tiny", "auto") is None
    with pytest.raises(FileNotFoundError, match="--pretrained"):
        find_pretrained("resnet50", str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="tiny"):
        find_pretrained("tiny", str(bad))
    with pytest.raises(ValueError, match="state dict"):
        build_classifier("resnet18", 3, find_pretrained("resnet18", str(bad)))


def test_tests_of_this_folder_run_on_one_thread():
    """tests/conftest.py's ONE_THREAD_DIRS policy reaches this folder (and restores the setting afterwards)."""
    assert torch.get_num_threads() == 1
