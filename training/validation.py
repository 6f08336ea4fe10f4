"""Validation during training: samples by the chosen rule, through the sampling scripts' `sample_images`, and KID.

`legacy` (the reference's selection rule): the online network, all-zero labels, no guidance, every training
timestep. `final` (the rule of the reported results): EMA weights, real validation label vectors, CFG `--cfg-scale`,
`--num-sampling-steps` respaced steps. KID is recomputed from scratch each time (docs/DECISIONS.md §C2.4: no
cumulative state) against a fixed real batch (docs/REFERENCE.md §3.2, docs/DECISIONS.md §C2.5).
"""

from __future__ import annotations

import argparse
import logging
import math

import torch

from data.transforms import to_uint8
from diffusion import create_diffusion
from infra.distributed import all_gather_objects
from infra.rng import keyed_seed
from synthesis.generate import sample_images

# Image i of the validation at optimiser step s draws from a stream keyed by (keyed_seed(seed, s), i) with this
# stride: at most this many validation samples keep their streams apart.
IMAGES_PER_VALIDATION = 10_000


def validation_seed(global_seed: int, step: int, index: int) -> int:
    """Seed of validation image `index` at optimiser step `step`: depends on nothing else (not the rank or batch)."""
    return keyed_seed(keyed_seed(global_seed, step), index, stride=IMAGES_PER_VALIDATION)


class Validator:
    """Generates validation samples by the chosen rule and measures KID against a fixed real batch.

    Args:
        args: the training flags.
        accelerator: the run's Accelerator (device, ranks).
        net: the bare online network (legacy rule).
        ema: the EMA network (final rule).
        latent_size: the network's input side.
        logger: the run's logger.
        real_batch: `training.data.load_validation_batch`'s (N, 3, H, W) images in [-1, 1] and (N, K) labels.
    """

    def __init__(
        self,
        args: argparse.Namespace,
        accelerator,
        net: torch.nn.Module,
        ema: torch.nn.Module,
        latent_size: int,
        logger: logging.Logger,
        real_batch: tuple[torch.Tensor, torch.Tensor],
    ) -> None:
        from metrics.inception import load_inception

        self.args, self.accelerator, self.net, self.latent_size = args, accelerator, net, latent_size
        self.device = accelerator.device
        real, self.real_labels = real_batch
        self.real_u8 = to_uint8(real)
        self.inception = load_inception(args.inception_weights, self.device)
        self.real_feats = self._features(self.real_u8)
        self.vae = None
        if not args.image_space:
            from data.vae import load_vae

            self.vae = load_vae(args.vae, self.device)
        steps = "" if args.val_mode == "legacy" else str(args.num_sampling_steps)
        self.diffusion = create_diffusion(timestep_respacing=steps, diffusion_steps=args.diffusion_steps)
        n = len(self.real_u8)
        shortfall = "" if n == args.val_samples else f" (the whole split: --val_samples {args.val_samples})"
        logger.info(
            f"Validation: {n} samples by the {args.val_mode} rule against the same number of real images{shortfall}"
        )

    @torch.no_grad()
    def _features(self, images_u8: torch.Tensor) -> torch.Tensor:
        """(N, D) float features of (N, 3, H, W) uint8 images, in batches of 16."""
        feats = [
            self.inception(images_u8[i : i + 16].to(self.device)).float().cpu() for i in range(0, len(images_u8), 16)
        ]
        return torch.cat(feats)

    @torch.no_grad()
    def run(self, ema: torch.nn.Module, step: int) -> tuple[float, float, float, torch.Tensor]:
        """Sample this rank's share, gather, and return (KID mean, KID std over subsets, KID standard error,
        (N, 3, H, W) uint8 samples)."""
        from metrics.kid import kid, kid_standard_error

        args, acc = self.args, self.accelerator
        n_total = len(self.real_labels)  # --val_samples, or the whole split when it is smaller
        per_rank = math.ceil(n_total / acc.num_processes)
        lo = min(acc.process_index * per_rank, n_total)
        hi = min(lo + per_rank, n_total)
        images = torch.zeros(0, 3, args.image_size, args.image_size, dtype=torch.uint8)
        if hi > lo:
            images = self._sample(ema, lo, hi, step)
        gathered = torch.cat([t for t in all_gather_objects(images)])
        fake_feats = self._features(gathered)
        subset = max(2, min(n_total // 4, len(fake_feats), len(self.real_feats)))
        g = torch.Generator().manual_seed(keyed_seed(args.global_seed, step))
        mean, std = kid(self.real_feats.double(), fake_feats.double(), subsets=100, subset_size=subset, generator=g)
        se = kid_standard_error(self.real_feats, fake_feats) if len(fake_feats) >= 3 else math.nan
        return float(mean), float(std), se, gathered

    def _sample(self, ema: torch.nn.Module, lo: int, hi: int, step: int) -> torch.Tensor:
        """Validation images lo..hi-1 at `step`, as (hi - lo, 3, H, W) uint8 on the CPU.

        Both rules map onto `sample_images`: legacy is the online network with all-zero labels and a guidance scale
        of 1 (no guidance) on the full-length diffusion; final the EMA network with the real labels and
        `--cfg-scale` on the respaced one. `--ghg` as for the sampling scripts.
        """
        args = self.args
        model = self.net if args.val_mode == "legacy" else ema
        model.eval()
        if args.val_mode == "legacy":
            labels = torch.zeros(hi - lo, args.num_classes, device=self.device)
            cfg_scale = 1.0
        else:
            labels = self.real_labels[lo:hi].to(self.device)
            cfg_scale = args.cfg_scale
        return sample_images(
            model,
            self.diffusion,
            labels,
            [validation_seed(args.global_seed, step, i) for i in range(lo, hi)],
            (args.in_channels, self.latent_size, self.latent_size),
            cfg_scale=cfg_scale,
            vae=self.vae,
            ghg=args.ghg,
        )
