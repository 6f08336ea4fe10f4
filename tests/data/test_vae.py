"""The VAE loader and latent encode/decode (the real SD-VAE is replaced by a tiny random AutoencoderKL)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from data import vae as vae_module
from data.vae import (
    LATENT_SCALE,
    VAE_HUB_IDS,
    decode_latents,
    encode_latents,
    latent_scale,
    load_vae,
    posterior_sample,
)
from infra.rng import sample_generators
from tests.helpers.phantom_data import make_tiny_vae


def test_constants():
    assert LATENT_SCALE == 0.18215  # SD-VAE scaling factor used by the reference (docs/REFERENCE.md §3)
    assert VAE_HUB_IDS == {"ema": "stabilityai/sd-vae-ft-ema", "mse": "stabilityai/sd-vae-ft-mse"}


def test_load_local_folder(tmp_path):
    vae = load_vae(str(make_tiny_vae(tmp_path / "vae")))
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())


def test_bad_vae_values(tmp_path):
    with pytest.raises(ValueError, match="--vae must be one of"):
        load_vae("kl-f8")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_vae(str(tmp_path / "empty"))


def test_missing_hub_weights_fail_fast_offline(monkeypatch):
    # A repository that is certainly not cached; HF_HUB_OFFLINE=1 comes from tests/conftest.py.
    monkeypatch.setitem(VAE_HUB_IDS, "ema", "stabilityai/not-a-cached-vae")
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as err:
        load_vae("ema")
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "models--stabilityai--not-a-cached-vae" in message and "--vae <folder>" in message


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setitem(VAE_HUB_IDS, "mse", "stabilityai/not-a-cached-vae")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")  # reserved TLD: never resolves
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    assert not vae_module._hub_reachable()
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="cannot be reached"):
        load_vae("mse")
    assert time.monotonic() - start < 10


def test_encode_is_a_scaled_posterior_sample_and_batch_invariant(tmp_path, generator):
    vae = load_vae(str(make_tiny_vae(tmp_path / "vae")))
    x = torch.rand(3, 3, 32, 32, generator=generator) * 2 - 1
    z = encode_latents(vae, x, sample_generators([10, 11, 12]))
    assert z.shape == (3, 4, 4, 4) and z.dtype == torch.float32
    # Image 2 alone with its own stream: the same latent, whatever the batch.
    alone = encode_latents(vae, x[2:], sample_generators([12]))
    torch.testing.assert_close(alone[0], z[2], rtol=1e-5, atol=1e-6)
    # Closed form: (mean + std * eps) * 0.18215 with eps from the same stream.
    post = vae.encode(x[:1]).latent_dist
    eps = torch.randn(post.mean.shape[1:], generator=torch.Generator().manual_seed(10))
    torch.testing.assert_close(z[0], ((post.mean + post.std * eps) * LATENT_SCALE)[0], rtol=1e-5, atol=1e-6)


def test_decode_divides_by_the_scale(tmp_path, generator):
    vae = load_vae(str(make_tiny_vae(tmp_path / "vae")))
    z = torch.randn(2, 4, 4, 4, generator=generator)
    out = decode_latents(vae, z)
    assert out.shape == (2, 3, 32, 32)
    torch.testing.assert_close(out, vae.decode(z / LATENT_SCALE).sample)


def _vae_with_config(folder, **changes):
    """The tiny VAE saved as a folder whose config.json gets `changes` (None deletes the key), then loaded."""
    make_tiny_vae(folder)
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return load_vae(str(folder))


def test_the_vae_own_scaling_factor_round_trip(tmp_path, generator):
    vae = _vae_with_config(tmp_path / "vae", scaling_factor=0.5)
    assert latent_scale(vae) == 0.5
    x = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    z = encode_latents(vae, x, sample_generators([3, 4]))
    # Closed form: the unscaled posterior sample of the same streams, times the config's 0.5.
    post = vae.encode(x).latent_dist
    eps = torch.stack([torch.randn(post.mean.shape[1:], generator=torch.Generator().manual_seed(s)) for s in (3, 4)])
    torch.testing.assert_close(z, (post.mean + post.std * eps) * 0.5, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(posterior_sample(vae, x, sample_generators([3, 4])), post.mean + post.std * eps)
    torch.testing.assert_close(decode_latents(vae, z), vae.decode(z / 0.5).sample)


def test_sd_scale_and_missing_entry_give_the_reference_latents(tmp_path, generator):
    x = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    z_old = torch.randn(2, 4, 4, 4, generator=generator)
    for name, changes in (("sd", {"scaling_factor": 0.18215}), ("missing", {"scaling_factor": None})):
        vae = _vae_with_config(tmp_path / name, **changes)
        assert latent_scale(vae) == LATENT_SCALE == 0.18215  # diffusers' AutoencoderKL default when absent
        unscaled = posterior_sample(vae, x, sample_generators([7, 8]))
        # Exactly the reference's encoding (sample x 0.18215) and decoding (/ 0.18215).
        assert torch.equal(encode_latents(vae, x, sample_generators([7, 8])), unscaled * 0.18215)
        assert torch.equal(decode_latents(vae, z_old), vae.decode(z_old / 0.18215).sample)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf")])
def test_a_bad_scaling_factor_is_rejected(tmp_path, bad):
    vae = _vae_with_config(tmp_path / "vae")
    vae.register_to_config(scaling_factor=bad)
    with pytest.raises(ValueError, match="scaling_factor"):
        encode_latents(vae, torch.zeros(1, 3, 32, 32))
