"""train.py under mixed precision: autocast covers the model's forward only, the loss is float32 (as the reference)."""

from __future__ import annotations

import pytest
import torch

import diffusion.gaussian_diffusion as gaussian_diffusion
import train
from infra.precision import tf32_state
from tests.helpers.phantom_data import make_phantom_oct


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps one process-wide state: a run without mixed precision earlier in this pytest process would make
    the bf16 Accelerator of this test refuse to start. Reset it before and after, as a fresh process would be."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("model", ["GeCA-T", "DiT-T/2"])
def test_bf16_forward_autocast_float32_loss(tmp_path, monkeypatch, model):
    # accelerate's prepare() runs the forward under autocast and returns float32 outputs; the reference computes the
    # diffusion loss on those outside autocast. Recorded here: the dtype of every Linear output during the step and
    # the dtype and autocast state of the loss terms (mean_flat of the MSE and of the VB terms).
    root = make_phantom_oct(tmp_path / "oct_phantoms", num_images=8, folds=2, size=16)
    seen = {"linear": set(), "loss": set()}
    real_mean_flat = gaussian_diffusion.mean_flat

    def mean_flat(x: torch.Tensor) -> torch.Tensor:
        seen["loss"].add((x.dtype, torch.is_autocast_enabled("cpu")))
        return real_mean_flat(x)

    def linear_hook(module, inputs, output):
        if isinstance(module, torch.nn.Linear) and module.training:
            seen["linear"].add(output.dtype)

    monkeypatch.setattr(gaussian_diffusion, "mean_flat", mean_flat)
    handle = torch.nn.modules.module.register_module_forward_hook(linear_hook)
    argv = [
        "--model", model, "--image_space", "--in_channels", "3", "--image-size", "16", "--data-path", str(root),
        "--dataset", "oct", "--num-classes", "11", "--global-batch-size", "4", "--epochs", "1", "--max-steps", "1",
        "--validate_every", "0", "--fold", "0", "--diffusion-steps", "50", "--num-workers", "0", "--load_from", "",
        "--results-dir", str(tmp_path / "results"), "--mixed-precision", "bf16", "--no-tf32",
    ]  # fmt: skip
    try:
        train.main(train.build_parser().parse_args(argv))
    finally:
        handle.remove()
    assert seen["linear"] == {torch.bfloat16}  # the forward ran under bf16 autocast
    assert seen["loss"] == {(torch.float32, False)}  # the loss did not
    assert tf32_state() == (False, False)  # --no-tf32 reached main()
