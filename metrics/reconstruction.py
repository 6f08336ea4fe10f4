"""VAE reconstructions of real images: the reference a latent denoiser can reach at best (`evaluate.py --recon-vae`).

A latent model's images pass through the VAE's decoder, which smooths what it cannot represent (speckle at 8x
compression). Metrics against the real images measure that loss and the denoiser's together; metrics against the
VAE's reconstructions of the same real images put the decoder on both sides, so what differs comes from the
denoiser (docs/DECISIONS.md §C9). The reconstructions are written once as PNG files into `{root}/{set name}/`, with
the identity of the real images (and their crop) and of the VAE's files in its DONE file; a later evaluation with the
same identity reuses them, any other rebuilds them. A file lock serialises evaluations that share the folder.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from filelock import FileLock
from torchvision import transforms
from tqdm import tqdm

from data.transforms import to_uint8
from data.vae import load_vae, reconstruct
from infra.atomic_io import atomic_save_png, atomic_write_text
from infra.provenance import source_identity
from metrics.features import ImageSet, file_image_set

# Marks a finished reconstruction folder; a folder without it (an interrupted run) is rebuilt.
DONE = "DONE"
_TO_TENSOR = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])


def reconstruction_identity(images: ImageSet, vae: str) -> str:
    """What the reconstructions of `images` by `vae` depend on, as a digest."""
    return hashlib.sha256(f"{images.identity}|{source_identity(vae)}".encode()).hexdigest()


@torch.no_grad()
def reconstruction_set(
    images: ImageSet,
    vae: str,
    root: Path,
    device: torch.device,
    batch_size: int = 32,
    labels: pd.DataFrame | None = None,
    csv_name: str | None = None,
) -> ImageSet:
    """The VAE's reconstructions of `images` as an image set over PNG files, written under `root` unless present.

    Args:
        images: the real images, as the metric sees them (KID: centre-cropped to --image-size).
        vae: "ema", "mse" or a diffusers AutoencoderKL folder (data.vae.load_vae).
        root: parent of the reconstruction folders.
        device: where the VAE runs.
        batch_size: images per forward pass.
        labels: optional label columns, one row per image; written with the file names as `csv_name`, so the
            folder reads like a sample folder's validation copy (classify.py scores it for label fidelity).
        csv_name: the CSV's name (e.g. val_syn_0.csv).

    Returns:
        An ImageSet named "recon_{images.name}" over the PNG files, in the order of `images`.
    """
    folder = root / images.name
    names = [f"{i:06d}.png" for i in range(len(images))]
    identity = reconstruction_identity(images, vae)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{images.name}.lock")):
        if not _is_done(folder, identity):
            _build(folder, identity, names, images, vae, device, batch_size, labels, csv_name)
    return file_image_set(f"recon_{images.name}", [folder / n for n in names], None)


def _is_done(folder: Path, identity: str) -> bool:
    done = folder / DONE
    return done.is_file() and done.read_text().strip() == identity


def _build(
    folder: Path,
    identity: str,
    names: list[str],
    images: ImageSet,
    vae: str,
    device: torch.device,
    batch_size: int,
    labels: pd.DataFrame | None,
    csv_name: str | None,
) -> None:
    """Write the reconstructions, the optional labels CSV, then DONE (an interrupted build leaves no DONE)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model = load_vae(vae, device)
    for lo in tqdm(range(0, len(images), batch_size), desc=f"VAE reconstructions of {images.name}", unit="batch"):
        hi = min(lo + batch_size, len(images))
        x = torch.stack([_TO_TENSOR(images.load(i)) for i in range(lo, hi)]).to(device)
        out = to_uint8(reconstruct(model, x)).permute(0, 2, 3, 1).cpu().numpy()
        for name, array in zip(names[lo:hi], out):
            atomic_save_png(folder / name, np.ascontiguousarray(array))
    if labels is not None and csv_name is not None:
        frame = labels.reset_index(drop=True).copy()
        frame.insert(0, "filename", names)
        atomic_write_text(folder / csv_name, frame.to_csv())  # an index column first, as the reference writes its CSVs
    atomic_write_text(folder / DONE, identity + "\n")
