"""Class-conditional synthesis shared by `sample_ddp.py` and `sample_ddp_val.py` (docs/REFERENCE.md §3.3, §3.4,
docs/DECISIONS.md §C2.3).

Every image has a global index i. Its noise (initial latent, seed cell, cellular update masks, DDPM noise) comes
from its own generator seeded by (global seed, i), so an image does not depend on the world size, the rank, the
batch size or on which other images share its batch: 1 and N processes write identical files. Ranks take the
indices i with i % world == rank; a re-run skips images already written.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.transforms import to_uint8
from infra import rng
from infra.atomic_io import atomic_save_grid, atomic_save_png, remove_stale_temps
from infra.distributed import DistInfo, all_gather_objects, barrier
from infra.provenance import check_settings, label_item, write_settings
from synthesis.annotations import write_annotations


def noise_seed(global_seed: int, index: int) -> int:
    """Seed of image `index`'s private random stream; depends on nothing else."""
    return rng.keyed_seed(global_seed, index)


@torch.no_grad()
def sample_images(
    model: torch.nn.Module,
    diffusion,
    labels: torch.Tensor,
    seeds: Sequence[int],
    latent_shape: tuple[int, int, int],
    cfg_scale: float = 1.5,
    sampler: str = "ddpm",
    vae=None,
    progress: bool = False,
    ghg: bool = True,
) -> torch.Tensor:
    """Generate one image per label vector.

    With `cfg_scale > 1` the batch is doubled into [labels; zeros] and sampled through `forward_with_cfg` (for a
    cellular model this is Gene Heredity Guidance: output channels re-seeded, hidden channels inherited,
    docs/REFERENCE.md §4.7); otherwise through `forward` with the labels, which carries output and hidden channels.
    Cellular models start from their single seed cell. With `ghg=False` nothing is carried: every denoising step grows
    from a fresh seed cell (output and hidden channels), as in training, drawn from the image's own generator.

    Args:
        model: denoiser in eval mode (EMA weights).
        diffusion: respaced diffusion (`create_diffusion(str(steps))` or `"ddimN"`).
        labels: (N, K) float multi-hot labels on the model's device.
        seeds: N per-image seeds (see `noise_seed`).
        latent_shape: (C, h, w) of the model's input.
        cfg_scale: classifier-free guidance scale (>= 1).
        sampler: "ddpm" (ancestral, the reference) or "ddim" (eta 0, carries the cell state too).
        vae: AutoencoderKL to decode latents, or None when sampling pixels (`--image_space`).
        progress: show a per-timestep progress bar.
        ghg: carry the cell state between steps (Gene Heredity Guidance, the reference); no effect for a
            non-cellular model.

    Returns:
        (N, 3, H, W) uint8 images on the CPU.
    """
    device = labels.device
    n = labels.shape[0]
    gens = rng.sample_generators(seeds, device)
    z = rng.randn((n, *latent_shape), gens, device)
    kwargs: dict = {"y": labels}
    fn = model.forward
    if cfg_scale > 1.0:
        z = torch.cat([z, z], 0)
        kwargs = {"y": torch.cat([labels, torch.zeros_like(labels)], 0), "cfg_scale": cfg_scale}
        fn = model.forward_with_cfg
    # A cellular model starts from its seed cell, whose noise comes from the per-image generators (batch-invariant);
    # without GHG the loop lets the model draw a fresh seed at every step instead.
    extras = model.initial_extras(z, generator=gens) if ghg else None
    if extras is not None:
        kwargs["extras"] = extras
    loop = diffusion.ddim_sample_loop if sampler == "ddim" else diffusion.p_sample_loop
    samples = loop(
        fn,
        z.shape,
        noise=z,
        clip_denoised=False,
        model_kwargs=kwargs,
        device=device,
        progress=progress,
        generator=gens,
        inherit_state=ghg,
    )
    samples = samples[:n]
    if vae is not None:
        from data.vae import decode_latents

        samples = decode_latents(vae, samples)
    return to_uint8(samples).cpu()


@dataclass
class SynthesisJob:
    """What to generate and where.

    Attributes:
        labels: (M, K) integer label vectors; row i is image i.
        label_names: K column names for the CSV.
        folder: the sample folder (`{sample_dir}/{sample_folder_name(...)}`).
        subdir: `gen_samples` (augmentation set) or `gen_samples_val` (validation copy).
        csv_name: `train_syn_{fold}.csv` or `val_syn_{fold}.csv`.
        settings: what determines the images besides their labels (checkpoint, VAE, sampler, seed, ...), recorded
            with the labels in `{folder}/{subdir}_settings.json`: a re-run keeps only images made with its settings
            for its labels.
    """

    labels: np.ndarray
    label_names: Sequence[str]
    folder: Path
    subdir: str
    csv_name: str
    settings: dict

    def png(self, index: int) -> Path:
        return self.folder / self.subdir / f"{index:06d}.png"

    @property
    def record(self) -> Path:
        return self.folder / f"{self.subdir}_settings.json"

    @property
    def grid(self) -> Path:
        """`{sample_dir}/{folder}_{subdir}_grid.png`: beside the sample folder, not in it, so that a recursive PNG glob
        of the folder (the reference's evaluate.py) finds exactly the generated images."""
        return self.folder.parent / f"{self.folder.name}_{self.subdir}_grid.png"


def prepare_folder(job: SynthesisJob, is_main: bool) -> None:
    """Check the images an earlier run left in the job's folder (kept only when made with this job's settings for its
    labels: `infra.provenance`), then (main process) record the settings, remove the temporary files a killed run
    left behind and create the folder; every process returns together."""
    folder, items = job.folder / job.subdir, [label_item(y) for y in job.labels]
    existing = [int(p.stem) for p in folder.glob("*.png") if p.stem.isdigit()]
    check_settings(job.record, job.settings, items, existing, f"images in {folder}", "--sample-dir")
    if is_main:
        write_settings(job.record, job.settings, items)
        # This job's own sub-folder and outputs only: the other sampling script may be writing in the same folder.
        remove_stale_temps(folder)
        outputs = (job.csv_name, f"{job.subdir}_annotations.npz.npy")
        remove_stale_temps(job.folder, recursive=False, targets=outputs)
        remove_stale_temps(job.folder.parent, recursive=False, targets=(job.grid.name,))
        folder.mkdir(parents=True, exist_ok=True)
    barrier()


def run_synthesis(
    job: SynthesisJob,
    model: torch.nn.Module,
    diffusion,
    dist: DistInfo,
    *,
    global_seed: int,
    per_proc_batch: int,
    latent_shape: tuple[int, int, int],
    cfg_scale: float,
    sampler: str,
    vae=None,
    logger=None,
    ghg: bool = True,
) -> dict:
    """Generate this rank's missing images, then (rank 0) write the CSV, the label array and a sample grid.

    `ghg` as in `sample_images`.

    Returns:
        Summary with `images` (written in this run, all ranks), `total`, `seconds`, `images_per_sec`, `csv`.
    """
    prepare_folder(job, dist.is_main)
    todo = [i for i in range(dist.rank, len(job.labels), dist.world_size) if not job.png(i).exists()]
    start = time.time()
    bar = tqdm(total=len(todo), unit="img", disable=not dist.is_main, desc=f"sampling ({job.subdir})")
    for b in range(0, len(todo), per_proc_batch):
        idx = todo[b : b + per_proc_batch]
        labels = torch.as_tensor(job.labels[idx], dtype=torch.float32, device=dist.device)
        images = sample_images(
            model,
            diffusion,
            labels,
            [noise_seed(global_seed, i) for i in idx],
            latent_shape,
            cfg_scale=cfg_scale,
            sampler=sampler,
            vae=vae,
            ghg=ghg,
        )
        for i, img in zip(idx, images):
            atomic_save_png(job.png(i), img.permute(1, 2, 0).numpy())
        bar.update(len(idx))
    bar.close()
    written = sum(all_gather_objects(len(todo)))
    barrier()
    seconds = time.time() - start
    summary = {
        "images": written,
        "total": len(job.labels),
        "seconds": seconds,
        "images_per_sec": written / seconds if seconds > 0 else float("nan"),
        "csv": None,
    }
    if dist.is_main:
        missing = [i for i in range(len(job.labels)) if not job.png(i).exists()]
        if missing:
            raise RuntimeError(
                f"{len(missing)} images missing after sampling, first {missing[:5]} in {job.folder / job.subdir}"
            )
        summary["csv"] = write_annotations(
            job.folder, job.csv_name, job.subdir, list(range(len(job.labels))), job.labels, job.label_names
        )
        save_sample_grid(job, job.grid)
        if logger is not None:
            logger.info(
                f"Wrote {written} new images ({len(job.labels)} in total) in {seconds:.1f} s "
                f"({summary['images_per_sec']:.3f} images/s); annotations {summary['csv']}"
            )
    barrier()
    return summary


def save_sample_grid(job: SynthesisJob, path: Path, count: int = 32, nrow: int = 8) -> None:
    """A grid of the first `count` generated images, for a quick look."""
    from PIL import Image

    imgs = [
        torch.from_numpy(np.array(Image.open(job.png(i)).convert("RGB"))).permute(2, 0, 1)
        for i in range(min(count, len(job.labels)))
    ]
    if imgs:
        atomic_save_grid(torch.stack(imgs), path, nrow=nrow)
