"""LPIPS diversity of a generated set (docs/REFERENCE.md §9.2): mean AlexNet-LPIPS over consecutive pairs of a shuffled
list.

The reference shuffles the generated paths (unseeded `np.random.shuffle`) and averages LPIPS over the N - 1
overlapping pairs (0, 1), (1, 2), ..., (N - 2, N - 1); higher means more diverse. Here the shuffle is seeded and the
pairs go through the network in batches. The network is LPIPS v0.1 with the AlexNet trunk on [0, 1] inputs
(`normalize=True`), the linear heads shipped with the `lpips` package (the same file torchmetrics bundles), and the
torchvision ImageNet AlexNet trunk read from a local file only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import lpips
import numpy as np
import torch
from torch import nn

from metrics.features import WeightsNotFoundError, torch_hub_checkpoint

ALEXNET_WEIGHTS_NAME = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1 file


def shuffled_consecutive_pairs(n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the N - 1 consecutive pairs of a random permutation of range(n).

    Args:
        n: number of items (at least 2).
        generator: CPU generator of the shuffle.

    Returns:
        (first, second), each (N - 1,) int64: pair k is (perm[k], perm[k + 1]).
    """
    if n < 2:
        raise ValueError(f"LPIPS diversity needs at least 2 images, got {n}")
    order = torch.randperm(n, generator=generator)
    return order[:-1], order[1:]


def lpips_diversity(
    n: int,
    distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    generator: torch.Generator | None = None,
    batch_size: int = 32,
) -> tuple[float, float]:
    """Mean and population standard deviation of a distance over the consecutive pairs of a seeded shuffle.

    Args:
        n: number of items.
        distance: (first indices (B,), second indices (B,)) -> (B,) distances of those item pairs.
        generator: CPU generator of the shuffle.
        batch_size: pairs per `distance` call.

    Returns:
        (mean, std) with std normalised by N - 1 pairs (NumPy's default `ddof=0`, as the reference).
    """
    first, second = shuffled_consecutive_pairs(n, generator)
    values = [
        distance(first[i : i + batch_size], second[i : i + batch_size]).detach().double().cpu().reshape(-1)
        for i in range(0, n - 1, batch_size)
    ]
    dists = torch.cat(values).numpy()
    return float(np.mean(dists)), float(np.std(dists))


def alexnet_trunk_state_dict(
    torchvision_state: Mapping[str, torch.Tensor], trunk_template: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """torchvision AlexNet weights (`features.{i}.*`) -> LPIPS trunk names (`slice{k}.{i}.*`).

    Args:
        torchvision_state: torchvision AlexNet state dict (the classifier entries are ignored).
        trunk_template: state dict of `lpips.LPIPS(net="alex").net`.

    Returns:
        A state dict for `strict=True` loading into the trunk.
    """
    out = {}
    for key in trunk_template:
        _, layer, param = key.split(".")
        source = f"features.{layer}.{param}"
        if source not in torchvision_state:
            raise KeyError(f"AlexNet weights lack {source}; is this a torchvision AlexNet state dict?")
        out[key] = torchvision_state[source]
    return out


def load_lpips(weights: str | Path | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """LPIPS v0.1 (AlexNet) with the ImageNet trunk from a local file, in eval mode.

    Call it as `net(a, b, normalize=True)` on (N, 3, H, W) images in [0, 1]; it returns (N, 1, 1, 1) distances.

    Args:
        weights: torchvision AlexNet weights file; None takes `$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth`.
        device: where the module lives.

    Returns:
        The `lpips.LPIPS` module (attribute `weights_file` records the trunk file).

    Raises:
        WeightsNotFoundError: the trunk file is missing (checked before anything is built; nothing downloads and a
            random trunk never yields a number).
    """
    path = Path(weights) if weights is not None else torch_hub_checkpoint(ALEXNET_WEIGHTS_NAME)
    if not path.is_file():
        raise WeightsNotFoundError("AlexNet ImageNet weights (LPIPS trunk)", [str(path)], "--alexnet-weights")
    trunk_state = torch.load(path, map_location="cpu", weights_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # lpips builds its trunk with torchvision's deprecated argument
        # pnet_rand builds the trunk without weights (no download); they are loaded from `path` just below.
        net = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
    net.net.load_state_dict(alexnet_trunk_state_dict(trunk_state, net.net.state_dict()), strict=True)
    net.weights_file = str(path)
    return net.eval().requires_grad_(False).to(device)
