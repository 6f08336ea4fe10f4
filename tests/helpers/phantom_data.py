"""Tiny stand-ins for tests: a phantom OCT / fundus dataset in the reference layout and a random SD-VAE-shaped VAE.

Usage from any test directory (pytest runs from the repository root):

    from tests.helpers.phantom_data import make_phantom_oct, make_tiny_vae

    root = make_phantom_oct(tmp_path / "oct")        # 16 images, 32 px, 2 folds, train/val CSVs
    vae_dir = make_tiny_vae(tmp_path / "vae")        # pass as --vae <folder>; 4 latent channels, factor 8
    feats = write_fold_latents(root, vae_dir, tmp_path / "features", size=32)  # --feature-path <folder>
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL

from data.phantoms import make_phantom_dataset
from data.vae import sd_vae_like


def make_phantom_oct(
    root: str | Path, num_images: int = 16, folds: int = 2, size: int = 32, seed: int = 0, test_frac: float = 0.0
) -> Path:
    """Write a phantom OCT dataset (PNGs + `{train,val[,test]}_{k}.csv`, 11 labels) to `root` and return it."""
    make_phantom_dataset(root, "oct", num_images=num_images, folds=folds, size=size, seed=seed, test_frac=test_frac)
    return Path(root)


def make_phantom_fundus(
    root: str | Path,
    num_images: int = 16,
    folds: int = 2,
    size: int = 32,
    seed: int = 0,
    npz: bool = True,
    test_frac: float | None = None,
) -> Path:
    """Write a phantom fundus dataset (label columns '0'..'4'; with `npz`, also retinamnist_224.npz) to `root` and
    return it. `test_frac` defaults to 0.25 with `npz` (the npz gets a test split of its own) and 0 without; with
    `test_frac=0` the npz's test split is fold 0's validation rows."""
    make_phantom_dataset(
        root,
        "fundus",
        num_images=num_images,
        folds=folds,
        size=size,
        seed=seed,
        test_frac=(0.25 if npz else 0.0) if test_frac is None else test_frac,
        retinamnist_npz=npz,
    )
    return Path(root)


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """A randomly initialised AutoencoderKL with the SD-VAE interface: 3 -> 4 latent channels, downsampling by 8."""
    return sd_vae_like(tiny=True, seed=seed, sample_size=32)


def make_tiny_vae(path: str | Path, seed: int = 0) -> Path:
    """Save tiny_vae(seed) as a diffusers folder (config.json + weights) usable as `--vae <folder>`; returns it."""
    tiny_vae(seed).save_pretrained(path)
    return Path(path)


def write_fold_latents(root: str | Path, vae_dir: str | Path, out: str | Path, size: int, fold: int = 0) -> Path:
    """The OCT training split of `fold` encoded by the VAE at `vae_dir`, in extract_features.py's layout (`out/
    features_{fold}/{i}.npy` (1, 4, size/8, size/8), `out/labels_{fold}/{i}.npy` (1, 11)); image i's posterior noise
    seeded with i. Returns `out`."""
    import numpy as np
    import torch

    from data.select import build_dataset
    from data.transforms import image_transform
    from data.vae import encode_latents, load_vae

    vae = load_vae(str(vae_dir))
    ds = build_dataset("oct", str(root), "train", fold, image_transform(size))
    for sub in (f"features_{fold}", f"labels_{fold}"):
        (Path(out) / sub).mkdir(parents=True, exist_ok=True)
    for i in range(len(ds)):
        x, y = ds[i]
        z = encode_latents(vae, x[None], torch.Generator().manual_seed(i))
        np.save(Path(out) / f"features_{fold}" / f"{i}.npy", z.numpy())
        np.save(Path(out) / f"labels_{fold}" / f"{i}.npy", np.asarray(y)[None])
    return Path(out)
