"""LPIPS diversity (docs/REFERENCE.md §9.2): seeded pairing and statistics with a stand-in network; offline trunk
loading."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from metrics.features import WeightsNotFoundError
from metrics.lpips_diversity import load_lpips, lpips_diversity, shuffled_consecutive_pairs


class StandInDistance(nn.Module):
    """A tiny network distance: squared difference of pooled random-conv features."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (self.conv(a).mean(dim=(2, 3)) - self.conv(b).mean(dim=(2, 3))).pow(2).sum(dim=1)


def test_pairs_are_consecutive_entries_of_a_seeded_permutation():
    first, second = shuffled_consecutive_pairs(7, torch.Generator().manual_seed(0))
    order = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    assert first.tolist() == order[:-1].tolist()
    assert second.tolist() == order[1:].tolist()
    again = shuffled_consecutive_pairs(7, torch.Generator().manual_seed(0))
    other = shuffled_consecutive_pairs(7, torch.Generator().manual_seed(1))
    assert torch.equal(first, again[0])
    assert not torch.equal(first, other[0])
    with pytest.raises(ValueError, match="at least 2"):
        shuffled_consecutive_pairs(1)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_diversity_statistics_with_stand_in_network(generator, batch_size):
    images = torch.rand(9, 3, 8, 8, generator=generator)
    net = StandInDistance()

    def distance(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return net(images[i], images[j])

    mean, std = lpips_diversity(9, distance, torch.Generator().manual_seed(4), batch_size=batch_size)
    # The reference's loop: one pair at a time over the shuffled list, NumPy mean and population std.
    order = torch.randperm(9, generator=torch.Generator().manual_seed(4)).tolist()
    with torch.no_grad():
        pairs = [net(images[a : a + 1], images[b : b + 1]).item() for a, b in zip(order[:-1], order[1:])]
    assert mean == pytest.approx(np.mean(pairs), rel=1e-5)
    assert std == pytest.approx(np.std(pairs), rel=1e-5)


def test_missing_alexnet_trunk_is_reported_fast(tmp_path):
    missing = tmp_path / "alexnet-owt-7be5be79.pth"
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        load_lpips(missing)
    assert time.perf_counter() - start < 1.0
    assert str(missing) in str(err.value)
    assert "--alexnet-weights" in str(err.value)


def test_trunk_comes_from_the_given_file(tmp_path, generator):
    # A torchvision-layout AlexNet `features` state dict with recognisable random values (a stand-in file).
    shapes = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
    state = {}
    for layer, shape in shapes.items():
        state[f"features.{layer}.weight"] = torch.randn(shape, generator=generator) * 0.05
        state[f"features.{layer}.bias"] = torch.randn(shape[0], generator=generator) * 0.05
    path = tmp_path / "alexnet.pth"
    torch.save(state, path)
    net = load_lpips(path)
    trunk = net.net.state_dict()
    torch.testing.assert_close(trunk["slice1.0.weight"], state["features.0.weight"])
    torch.testing.assert_close(trunk["slice5.10.bias"], state["features.10.bias"])
    assert net.weights_file == str(path)
    images = torch.rand(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        same = net(images, images, normalize=True).reshape(-1)
        different = net(images, images.flip(0), normalize=True).reshape(-1)
    assert same.shape == (2,)
    torch.testing.assert_close(same, torch.zeros(2), atol=1e-6, rtol=0)
    assert (different > 0).all()
