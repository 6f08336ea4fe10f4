"""The sizes of the demo: `full` (`make demo`, about 23 minutes on 2 CPU cores) and `quick` (`make demo QUICK=1`).

Both run the paper's latent pipeline (images -> VAE latents -> denoiser -> decode, docs/DECISIONS.md §C7) on 64 px
phantom B-scans with a domain VAE trained by `train_vae.py` (downsampling 8, so 8x8x4 latents) and the tiny registry
denoisers (GeCA-T, DiT-T/2, LDM-T: CPU stand-ins, not the paper's configurations). GeCA dominates the time: each
forward runs 12 cellular steps over every latent cell, and Gene Heredity Guidance needs a few thousand training
steps before its sampling trajectory settles (docs/DEMO.md has the measured curve).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

# Tiny stand-ins of the paper's three denoisers, in the row order of its Table A (LDM-B, DiT-S, GeCA-S).
DEMO_MODELS: tuple[str, ...] = ("LDM-T", "DiT-T/2", "GeCA-T")
# The paper-scale registry key each tiny model stands in for.
PAPER_MODELS: dict[str, str] = {"LDM-T": "LDM-B", "DiT-T/2": "DiT-S/2", "GeCA-T": "GeCA-S"}
# The cellular model of DEMO_MODELS: it trains longest, and it is also sampled without Gene Heredity Guidance.
CELLULAR_MODEL = "GeCA-T"
FOLD = 0
NUM_CLASSES = 11  # the OCT label set


@dataclass(frozen=True)
class Profile:
    """Every size the demo's commands use; the defaults are the full demo's.

    Attributes:
        name: "full", "quick", "study" or "study-quick".
        num_images: phantom images (2 per patient), split into `folds` folds plus a `test_frac` test split.
        folds: folds written (the demo trains and evaluates fold 0 only, the study the first --folds).
        test_frac: fraction of patients held out as the classification study's test split.
        image_size: phantom side in pixels; the latents are image_size / 8 on a side.
        vae_steps, vae_batch: optimiser steps and batch of the domain VAE (train_vae.py).
        batch_size: training batch of the denoisers.
        epochs, baseline_epochs: training epochs of GeCA-T and of the baselines (LDM-T, DiT-T/2). Each trains until
            its samples settle and show their labels (docs/DEMO.md): GeCA-T's GHG samples settle at about 2000 steps,
            its label fidelity levels off by 2500; the baselines need about 4000, cheap next to GeCA's time.
        validate_every, baseline_validate_every: epochs between validations (KID of `val_samples` images, the
            best_ckpt.pt choice); chosen so the last epoch is validated.
        val_samples: images per validation, at most the whole validation split (118 in the full profile), so each
            KID's standard error is small against the differences the choice acts on (docs/DEMO.md, "Checkpoint
            choice").
        best_rule: train.py's --best-rule: `within-noise` keeps the latest validation whose KID the noise cannot
            tell from the lowest (the reference's `lowest` chose a noisy early checkpoint, docs/DEMO.md).
        lr: AdamW learning rate of the denoisers (the reference's 1e-4 needs far more steps than a demo has).
        ema_decay: EMA decay per step (the reference's 0.9999 needs hundreds of thousands of steps).
        log_every: steps between logged training losses (the points of the training curve).
        sampling_steps, sample_batch: respaced sampling steps (also of each validation) and images per batch.
        expand_ratio: synthetic images per training label vector (the paper uses 5; 1 keeps the demo's
            classification study within its time budget). GeCA without GHG gets a validation copy only.
        cfg_scale: guidance scale of every synthetic set (GHG for GeCA).
        cls_epochs, cls_batch: epochs and batch of each downstream classifier.
        cls_lr: its SGD learning rate (the protocol's 1e-3 stays at chance with a tiny CNN and minutes of training).
        cls_seeds: classifier seeds; at least two give paired p-values.
    """

    name: str = "full"
    num_images: int = 600
    folds: int = 4
    test_frac: float = 0.2
    image_size: int = 64
    vae_steps: int = 700
    vae_batch: int = 16
    batch_size: int = 16
    epochs: int = 115
    baseline_epochs: int = 181
    validate_every: int = 57
    baseline_validate_every: int = 90
    val_samples: int = 120
    best_rule: str = "within-noise"
    lr: float = 2e-3
    ema_decay: float = 0.99
    log_every: int = 20
    sampling_steps: int = 25
    sample_batch: int = 64
    expand_ratio: int = 1
    cfg_scale: float = 1.5
    cls_epochs: int = 25
    cls_batch: int = 32
    cls_lr: float = 0.05
    cls_seeds: tuple[int, ...] = (0, 1)

    def epochs_of(self, model: str) -> int:
        """Training epochs of `model`."""
        return self.epochs if model == CELLULAR_MODEL else self.baseline_epochs

    def validate_every_of(self, model: str) -> int:
        """Epochs between validations of `model`."""
        return self.validate_every if model == CELLULAR_MODEL else self.baseline_validate_every

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Profile:
        """The profile `as_dict` wrote (as read back from a run's JSON config)."""
        return cls(**{**values, "cls_seeds": tuple(values["cls_seeds"])})


# The full demo (`make demo`): the defaults.
FULL = Profile()

# The same stages at the smallest sizes (what the test suite runs).
QUICK = replace(
    FULL,
    name="quick",
    num_images=64,
    vae_steps=8,
    vae_batch=8,
    batch_size=8,
    epochs=2,
    baseline_epochs=2,
    validate_every=1,
    baseline_validate_every=1,
    val_samples=8,
    ema_decay=0.5,
    log_every=1,
    sampling_steps=4,
    cls_epochs=1,
)

# The study (demo/study.py): the full sizes on five written folds, each fold's training split 382 images (23 steps of
# 16), so GeCA-T trains 111 epochs (2553 steps) and the baselines 175 (4025 steps), as many steps as the demo's
# models; three validations each (first, middle and last epoch); three classifier seeds per fold.
STUDY = replace(
    FULL,
    name="study",
    folds=5,
    epochs=111,
    baseline_epochs=175,
    validate_every=55,
    baseline_validate_every=87,
    cls_seeds=(0, 1, 2),
)
# The study at the quick sizes (what the test suite runs), five written folds.
STUDY_QUICK = replace(QUICK, name="study-quick", folds=5)

PROFILES: dict[str, Profile] = {p.name: p for p in (FULL, QUICK, STUDY, STUDY_QUICK)}
