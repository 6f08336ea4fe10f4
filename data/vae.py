"""The Stable Diffusion VAE: one replaceable loader, and latent encode/decode with the VAE's own scale
(docs/REFERENCE.md §3, docs/DECISIONS.md §C4).

`--vae ema|mse` loads `stabilityai/sd-vae-ft-{ema,mse}` through the Hugging Face cache, as the reference does; any
other value is a local folder holding a diffusers AutoencoderKL (`config.json` + weights), e.g. one written by
`train_vae.py`. Nothing is downloaded at import. When the weights are missing and the hub is unreachable (or
HF_HUB_OFFLINE=1), loading fails within seconds with a message naming the cache folder and the `--vae <folder>`
alternative.

Latents are posterior samples times the loaded VAE's `config.scaling_factor` (docs/DECISIONS.md §C7): 0.18215 for
the SD-VAE ema/mse weights, so the reference's latents are unchanged, and the unit-variance value a domain VAE
stores for itself.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from diffusers import AutoencoderKL

from infra.errors import UserError
from infra.rng import Generator, randn

# Latent scaling factor of the SD VAE used by the reference (encode: x 0.18215, decode: / 0.18215); also what a VAE
# config without `scaling_factor` gets (the diffusers AutoencoderKL default).
LATENT_SCALE = 0.18215
# The hub repositories behind `--vae ema` and `--vae mse`.
VAE_HUB_IDS = {"ema": "stabilityai/sd-vae-ft-ema", "mse": "stabilityai/sd-vae-ft-mse"}
# Seconds allowed for the one connection attempt that decides whether the hub can be reached.
HUB_PROBE_TIMEOUT_S = 3.0


def _hub_reachable() -> bool:
    """Whether a download could work: not offline and the hub endpoint accepts a TCP connection quickly.

    huggingface_hub retries an unreachable host for about half a minute; this probe makes the failure immediate.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True  # behind a proxy only the real request can tell
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _missing_weights_message(hub_id: str) -> str:
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE) / ("models--" + hub_id.replace("/", "--"))
    return (
        f"SD-VAE weights {hub_id!r} are not in the Hugging Face cache and the hub cannot be reached "
        f"(offline or no network). Either place config.json and diffusion_pytorch_model.safetensors of {hub_id} in "
        f"{cache}/snapshots/<revision>/ (with {cache}/refs/main containing <revision>), or put those two files in any "
        "folder and pass --vae <folder>."
    )


def load_vae(vae: str, device: torch.device | str = "cpu") -> AutoencoderKL:
    """Load the VAE in eval mode on `device`.

    Args:
        vae: "ema" or "mse" (the reference's choices, from the hub cache) or a folder with a diffusers AutoencoderKL.
        device: where to put it.

    Returns:
        The AutoencoderKL, eval mode, gradients disabled.

    Raises:
        FileNotFoundError: hub weights missing offline, or the folder lacks config.json.
        ValueError: `vae` is neither ema/mse nor an existing folder.
    """
    if vae in VAE_HUB_IDS:
        hub_id = VAE_HUB_IDS[vae]
        try:
            model = AutoencoderKL.from_pretrained(hub_id, local_files_only=True)
        except OSError as err:
            if not _hub_reachable():
                raise FileNotFoundError(_missing_weights_message(hub_id)) from err
            model = AutoencoderKL.from_pretrained(hub_id)
    else:
        folder = Path(vae)
        if not folder.is_dir():
            raise UserError(
                f"--vae must be one of {sorted(VAE_HUB_IDS)} or a folder holding a diffusers VAE, got {vae!r}"
            )
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"--vae folder {folder} has no config.json (expected a diffusers AutoencoderKL)")
        model = AutoencoderKL.from_pretrained(folder)
    model.requires_grad_(False)
    return model.to(device).eval()


def sd_vae_like(tiny: bool = False, seed: int = 0, sample_size: int = 256) -> AutoencoderKL:
    """A randomly initialised AutoencoderKL shaped like SD-VAE (`stabilityai/sd-vae-ft-ema`: 3 -> 4 channels, /8).

    Decoding cost depends on the shape, not on the weights, so random weights time the real decoder (the GPU check).
    `tiny` keeps the block layout with 8-channel blocks: the tests' VAE and the GPU check's CPU dry run.
    """
    widths, layers, groups = ((8, 8, 8, 8), 1, 4) if tiny else ((128, 256, 512, 512), 2, 32)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=widths,
            layers_per_block=layers,
            norm_num_groups=groups,
            sample_size=sample_size,
        ).eval()


def latent_scale(vae: AutoencoderKL) -> float:
    """The factor that maps the VAE's posterior samples to unit-variance latents: its `config.scaling_factor`.

    A config without the entry (or with null) gets LATENT_SCALE, the value diffusers' AutoencoderKL defaults to.

    Raises:
        ValueError: the config holds a scaling factor that is not a positive finite number.
    """
    value = getattr(vae.config, "scaling_factor", None)
    if value is None:
        return LATENT_SCALE
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"the VAE's config.json has scaling_factor {value}; it must be a positive finite number")
    return value


@torch.no_grad()
def posterior_sample(vae: AutoencoderKL, x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Images -> unscaled latents: mean + std * eps of the VAE posterior (a sample, not the mode, as the reference).

    Args:
        vae: the autoencoder.
        x: (N, 3, H, W) images in [-1, 1].
        generator: noise of the sample (infra.rng: one generator, one per image, or None for the global stream).
            With one generator per image the latent of an image does not depend on its batch.

    Returns:
        (N, 4, H/8, W/8) float latents, not multiplied by the scaling factor.
    """
    posterior = vae.encode(x).latent_dist
    eps = randn(posterior.mean.shape, generator, device=posterior.mean.device, dtype=posterior.mean.dtype)
    return posterior.mean + posterior.std * eps


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Images -> scaled latents: a sample of the VAE posterior times `latent_scale(vae)` (the reference's encoding).

    Args:
        vae: the autoencoder.
        x: (N, 3, H, W) images in [-1, 1].
        generator: noise of the posterior sample (see `posterior_sample`).

    Returns:
        (N, 4, H/8, W/8) float latents.
    """
    return posterior_sample(vae, x, generator) * latent_scale(vae)


@torch.no_grad()
def decode_latents(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images: decode z / latent_scale(vae).

    Args:
        vae: the autoencoder.
        z: (N, 4, h, w) latents as produced by encode_latents (or sampled by a diffusion model).

    Returns:
        (N, 3, 8h, 8w) images in about [-1, 1].
    """
    return vae.decode(z / latent_scale(vae)).sample


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """The VAE's reconstruction of (N, 3, H, W) images in [-1, 1]: decoded from the posterior mean (no noise, no
    scaling factor: it cancels between encoding and decoding)."""
    return vae.decode(vae.encode(x).latent_dist.mean).sample
