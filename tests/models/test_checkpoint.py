"""infra.checkpoint: safe loading of reference checkpoints, `ema` selection, `module.` stripping, atomic save."""

from __future__ import annotations

import argparse
import pickle

import pytest
import torch

from infra.checkpoint import find_model, load_checkpoint, save_checkpoint
from models import DiT_models
from tests.helpers.geca_layout import reference_layout

CLASSES, CHANNELS = 11, 4


def reference_geca_t_state_dict(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random tensors under the reference's GeCA key names (docs/REFERENCE.md §4.11) at GeCA-T sizes, built without our
    model."""
    shapes = reference_layout(dim=64, mlp=128, hidden=16, classes=CLASSES, heads=2)
    return {k: torch.randn(s, generator=generator) for k, s in shapes.items()}


def test_reference_checkpoint_loads_strictly(tmp_path, generator):
    # Reference layout (docs/REFERENCE.md §8): "model" with DDP's module. prefix, "ema", "opt", and the parsed flags.
    ema = reference_geca_t_state_dict(generator)
    online = {f"module.{k}": v + 1 for k, v in ema.items()}
    args = argparse.Namespace(model="GeCA-S", image_size=256, global_batch_size=128)
    path = tmp_path / "best_ckpt.pt"
    torch.save({"model": online, "ema": ema, "opt": {"state": {}, "param_groups": []}, "args": args}, path)

    state = find_model(path)
    assert state.keys() == ema.keys()
    model = DiT_models["GeCA-T"](input_size=8, num_classes=CLASSES, in_channels=CHANNELS)
    model.load_state_dict(state, strict=True)
    torch.testing.assert_close(model.cell_to_embedding.weight, ema["cell_to_embedding.weight"], rtol=0, atol=0)
    assert load_checkpoint(path)["args"] == args


def test_find_model_strips_module_prefix(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"module.a.weight": torch.ones(2), "b.bias": torch.zeros(1)}, path)
    state = find_model(path)
    assert set(state) == {"a.weight", "b.bias"}


def test_find_model_bare_state_dict_passthrough(tmp_path):
    model = DiT_models["DiT-T/2"](input_size=8, num_classes=CLASSES, in_channels=CHANNELS)
    path = tmp_path / "bare.pt"
    torch.save(model.state_dict(), path)
    state = find_model(path)
    assert state.keys() == model.state_dict().keys()
    DiT_models["DiT-T/2"](input_size=8, num_classes=CLASSES, in_channels=CHANNELS).load_state_dict(state, strict=True)


class _Payload:
    """A class outside the allow-list."""


def test_loading_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"model": {}, "payload": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)


def test_missing_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "ckpt.pt"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_model(missing)


def test_save_and_load_round_trip(tmp_path):
    args = argparse.Namespace(lr=1e-4)
    path = tmp_path / "sub" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(3)}, "args": args})
    loaded = load_checkpoint(path)
    torch.testing.assert_close(loaded["model"]["w"], torch.arange(3))
    assert loaded["args"] == args
    save_checkpoint(path, model={"w": torch.ones(1)}, ema={"w": torch.zeros(1)}, args=args)
    torch.testing.assert_close(find_model(path), {"w": torch.zeros(1)})
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary files left behind
