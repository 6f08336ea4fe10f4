"""Folder names that later commands depend on (docs/REFERENCE.md §3.2, §3.3): one small function each."""

from __future__ import annotations

import os
from pathlib import Path


def model_tag(model: str) -> str:
    """Registry key as used in folder names: '/' becomes '-' ('DiT-S/2' -> 'DiT-S-2')."""
    return model.replace("/", "-")


def experiment_dir(results_dir: str | Path, model: str, fold: int) -> Path:
    """The next experiment folder `{results_dir}/{NNN}-{model}-{fold}` (docs/REFERENCE.md §3.2).

    NNN is the zero-padded count of entries already in `results_dir`, as the reference counts them (`glob.glob` of
    `*`, which passes over hidden entries such as `.DS_Store` or `.ipynb_checkpoints`).
    """
    results_dir = Path(results_dir)
    index = sum(not p.name.startswith(".") for p in results_dir.iterdir()) if results_dir.is_dir() else 0
    return results_dir / f"{index:03d}-{model_tag(model)}-{fold}"


def sample_folder_name(
    model: str,
    fold: int,
    num_sampling_steps: int,
    ckpt: str | Path,
    image_size: int,
    vae: str,
    cfg_scale: float,
    global_seed: int,
    *,
    sampler: str = "ddpm",
    ghg: bool = True,
) -> str:
    """Sample folder of `sample_ddp.py` / `sample_ddp_val.py` (docs/REFERENCE.md §3.3).

    Example: `GeCA-S-GS-fold-0-nstep-250-best_ckpt-size-256-vae-ema-cfg-1.5-seed-0`. A `--vae` given as a local
    folder contributes its base name. The reference's defaults (DDPM, Gene Heredity Guidance) give exactly the
    reference's name; this project's variants append a suffix each, so their sets live beside it: `-ddim` for
    `--sampler ddim`, then `-noghg` for `--no-ghg` (fresh-seed sampling, docs/DECISIONS.md §C7). The suffix follows
    the flags alone, whatever the model, so later commands can derive the folder from the flags.
    """
    ckpt_string = os.path.basename(str(ckpt)).replace(".pt", "")
    vae_string = os.path.basename(os.path.normpath(str(vae)))
    name = (
        f"{model_tag(model)}-GS-fold-{fold}-nstep-{num_sampling_steps}-{ckpt_string}-size-{image_size}"
        f"-vae-{vae_string}-cfg-{cfg_scale}-seed-{global_seed}"
    )
    if sampler == "ddim":
        name += "-ddim"
    if not ghg:
        name += "-noghg"
    return name
