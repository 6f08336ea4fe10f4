"""The downstream classifier: a torchvision ResNet with a K-way multi-label head, or a tiny CNN for CPU runs.

ImageNet weights are read from a local file only (docs/DECISIONS.md §C4): `--pretrained FILE`, or torchvision's own
cache `$TORCH_HOME/hub/checkpoints/{arch}-*.pth`. Nothing is ever downloaded, and missing weights stop the run: random
initialisation only when asked for (`--pretrained none`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models

from infra.errors import UserError

ARCHS: tuple[str, ...] = ("resnet50", "resnet18", "tiny")
_TORCHVISION = {"resnet50": models.resnet50, "resnet18": models.resnet18}
# torchvision's original ImageNet weight files (IMAGENET1K_V1, the ones `pretrained=True` gave FDDM); preferred
# over other `{arch}-*.pth` files in the cache.
_PREFERRED_FILES = {"resnet50": "resnet50-0676ba61.pth", "resnet18": "resnet18-f37072fd.pth"}


class TinyCNN(nn.Module):
    """Four strided conv blocks, global average pooling and a linear head: a seconds-on-CPU stand-in for tests/demos."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        blocks, channels = [], 3
        for out in (width, 2 * width, 4 * width, 8 * width):
            blocks += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images -> (N, K) logits."""
        return self.fc(self.features(x).flatten(1))  # (N, 8*width) -> (N, K)


def find_pretrained(arch: str, pretrained: str = "auto", hub_dir: str | Path | None = None) -> Path | None:
    """The ImageNet weight file to start from, or None for random initialisation.

    Args:
        arch: one of ARCHS.
        pretrained: "auto" (torchvision's cache; the tiny CNN has no ImageNet weights), "none" (random
            initialisation) or a file.
        hub_dir: torch hub folder; default `torch.hub.get_dir()` (follows $TORCH_HOME).

    Returns:
        The weight file, or None.

    Raises:
        UserError: "auto" for a ResNet whose file is not in the cache (never replaced by random weights, §C4).
    """
    if arch not in ARCHS:
        raise ValueError(f"--arch {arch!r}: choose from {ARCHS}")
    if pretrained == "none":
        return None
    if pretrained != "auto":
        path = Path(pretrained)
        if arch not in _TORCHVISION:
            raise ValueError(f"--pretrained {path}: --arch {arch} has no ImageNet weights; use resnet50 or resnet18")
        if not path.is_file():
            raise FileNotFoundError(f"--pretrained {path}: no such file")
        return path
    if arch not in _TORCHVISION:
        return None
    folder = Path(hub_dir if hub_dir is not None else torch.hub.get_dir()) / "checkpoints"
    preferred = folder / _PREFERRED_FILES[arch]
    if preferred.is_file():
        return preferred
    matches = sorted(folder.glob(f"{arch}-*.pth"))
    if not matches:
        raise UserError(
            f"--pretrained auto: no ImageNet weights for --arch {arch} in {folder}; put {preferred.name} there or pass "
            "--pretrained FILE (--pretrained none trains from random initialisation, not the paper's protocol)"
        )
    return matches[0]


def _load_imagenet_trunk(model: nn.Module, path: Path) -> None:
    """Load every ImageNet weight except the 1000-way `fc` head (checked: nothing else may be missing)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    kind = f"{path}: not a torchvision {type(model).__name__} state dict"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{kind} ({err})") from err
    if unexpected or set(missing) - {"fc.weight", "fc.bias"}:
        absent = sorted(set(missing) - {"fc.weight", "fc.bias"})
        raise ValueError(f"{kind} (missing {absent[:5]}, unexpected {sorted(unexpected)[:5]})")


def build_classifier(arch: str, num_classes: int, weights: Path | None = None) -> nn.Module:
    """A multi-label classifier emitting K logits.

    Args:
        arch: "resnet50", "resnet18" or "tiny".
        num_classes: number of labels K.
        weights: ImageNet weight file for the trunk (ResNets only), or None for random initialisation.

    Returns:
        The model on CPU; its `fc` head is a fresh nn.Linear(D, K).
    """
    if arch == "tiny":
        if weights is not None:
            raise ValueError("--arch tiny has no ImageNet weights")
        return TinyCNN(num_classes)
    if arch not in _TORCHVISION:
        raise ValueError(f"--arch {arch!r}: choose from {ARCHS}")
    model = _TORCHVISION[arch](weights=None)
    if weights is not None:
        _load_imagenet_trunk(model, weights)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model
