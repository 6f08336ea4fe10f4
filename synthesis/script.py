"""The body both sampling scripts share: set up the process, load labels, build the model, synthesise."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import numpy as np

from infra.distributed import cleanup_distributed, setup_distributed
from infra.logs import create_logger
from infra.provenance import source_identity
from infra.seeding import rank_seed, seed_everything
from synthesis.cli import resolve_label_names, sampling_setup
from synthesis.generate import SynthesisJob, run_synthesis


def setting_notes(args: argparse.Namespace) -> list[str]:
    """Log lines naming the settings `parse_sampling_args` took from the checkpoint and the given flags that won."""
    notes = []
    if getattr(args, "checkpoint_settings", None):
        notes.append(f"from the checkpoint: {', '.join(args.checkpoint_settings)}")
    if getattr(args, "checkpoint_overrides", None):
        notes.append(f"given, replacing the checkpoint's: {', '.join(args.checkpoint_overrides)}")
    return notes


def image_settings(args: argparse.Namespace) -> dict:
    """What determines a sampling run's images besides each one's label: the weights, the VAE, the sampler and its
    settings, the seed (precision and compilation change only rounding and are left out)."""
    return {
        "model": args.model,
        "ckpt": source_identity(args.ckpt),
        "vae": None if args.image_space else source_identity(args.vae),
        "image_size": args.image_size,
        "image_space": bool(args.image_space),
        "sampler": args.sampler,
        "num_sampling_steps": args.num_sampling_steps,
        "cfg_scale": args.cfg_scale,
        "ghg": bool(args.ghg),
        "global_seed": args.global_seed,
    }


def run_sampling_script(
    args: argparse.Namespace,
    name: str,
    load_labels: Callable[[], Sequence[np.ndarray]],
    subdir: str,
    csv_name: str,
) -> dict:
    """Run one sampling script end to end and return its summary (see `run_synthesis`).

    Args:
        args: the parsed flags (`synthesis.cli.add_sampling_args` plus `--data-path`).
        name: logger name (the script's).
        load_labels: returns the label vector of every image to generate, in index order; called before the model
            is built, so a missing fold fails early.
        subdir: `gen_samples` or `gen_samples_val`.
        csv_name: `train_syn_{fold}.csv` or `val_syn_{fold}.csv`.
    """
    dist = setup_distributed(args.device)
    seed_everything(rank_seed(args.global_seed, dist.world_size, dist.rank))
    logger = create_logger(name, rank=dist.rank)
    try:
        names = resolve_label_names(args)
        labels = np.stack(list(load_labels()))
        for line in setting_notes(args):
            logger.info(line)
        model, diffusion, vae, latent_shape, folder = sampling_setup(args, dist)
        cellular = getattr(model, "is_cellular", False)
        heredity = ("GHG" if args.ghg else "fresh seed cell every step") if cellular else "not cellular"
        logger.info(
            f"{len(labels)} images into {folder / subdir} on {dist.device}, {dist.world_size} process(es), "
            f"cfg {args.cfg_scale}, {args.num_sampling_steps} {args.sampler} steps, {heredity}"
        )
        if not args.ghg and not cellular:
            logger.info(f"--no-ghg has no effect on {args.model}: it carries no cell state")
        job = SynthesisJob(labels, names, folder, subdir, csv_name, image_settings(args))
        return run_synthesis(
            job,
            model,
            diffusion,
            dist,
            global_seed=args.global_seed,
            per_proc_batch=args.per_proc_batch_size,
            latent_shape=latent_shape,
            cfg_scale=args.cfg_scale,
            sampler=args.sampler,
            vae=vae,
            logger=logger,
            ghg=args.ghg,
        )
    finally:
        cleanup_distributed()
