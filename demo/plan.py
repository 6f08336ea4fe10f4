"""The demo's stages: the exact command lines of the real entry scripts, and where their outputs land.

Pipeline (SPEC A 1 in image space, then the classification study of SPEC C6):
data -> labels -> train (x3) -> sample-val (x3) -> sample-aug (x3) -> evaluate (x3) -> classify -> report.
Every path in a command is relative to the repository root when the output folder lies inside it (so the commands
read like the README's), absolute otherwise; the commands run from the repository root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from demo.profiles import DEMO_MODELS, FOLD, NUM_CLASSES, Profile
from demo.runner import REPO_ROOT, Stage
from infra.naming import model_tag, sample_folder_name

# The reference's ancestral sampler: with the demo's briefly trained models it stays closer to the data than DDIM.
SAMPLER = "ddpm"
GLOBAL_SEED = 0


@dataclass(frozen=True)
class Layout:
    """Where each stage writes, under the demo's output folder `out` (absolute)."""

    out: Path

    def shown(self, path: Path) -> str:
        """`path` as written in a command: relative to the repository root when inside it."""
        path = Path(path).resolve()
        return str(path.relative_to(REPO_ROOT)) if REPO_ROOT in path.parents else str(path)

    @property
    def data(self) -> Path:
        return self.out / "data" / "oct_phantom"

    @property
    def features(self) -> Path:
        return self.out / "features"

    @property
    def synthetic(self) -> Path:
        return self.out / "synthetic"

    @property
    def classify(self) -> Path:
        return self.out / "classify"

    @property
    def feature_cache(self) -> Path:
        return self.out / "feature_cache"

    @property
    def assets(self) -> Path:
        return self.out / "report_assets"

    @property
    def report(self) -> Path:
        return self.out / "REPORT.md"

    @property
    def config(self) -> Path:
        return self.out / "demo_config.json"

    def results(self, model: str) -> Path:
        """`--results-dir` of one model (one folder per model, emptied before its training)."""
        return self.out / "results" / model_tag(model)

    def experiment(self, model: str) -> Path:
        """train.py's experiment folder: index 000 in an empty results folder (SPEC 3.2 naming)."""
        return self.results(model) / f"000-{model_tag(model)}-{FOLD}"

    def checkpoint(self, model: str) -> Path:
        return self.experiment(model) / "checkpoints" / "best_ckpt.pt"

    def sample_folder(self, model: str, profile: Profile) -> Path:
        """The folder both sampling scripts write (SPEC 3.3 name; the scripts append '-ddim' for DDIM sampling)."""
        name = sample_folder_name(
            model,
            FOLD,
            profile.sampling_steps,
            self.checkpoint(model),
            profile.image_size,
            "ema",
            profile.cfg_scale,
            GLOBAL_SEED,
        )
        return self.synthetic / (name + "-ddim" if SAMPLER == "ddim" else name)


def _train_stage(model: str, p: Profile, lay: Layout) -> Stage:
    tag = model_tag(model)
    command = (
        "python", "train.py",
        "--model", model,
        "--image_space", "--in_channels", "3", "--image-size", str(p.image_size),
        "--data-path", lay.shown(lay.data), "--dataset", "oct", "--num-classes", str(NUM_CLASSES),
        "--fold", str(FOLD),
        "--results-dir", lay.shown(lay.results(model)),
        "--global-batch-size", str(p.batch_size), "--epochs", str(p.epochs),
        "--lr", str(p.lr), "--ema-decay", str(p.ema_decay),
        "--validate_every", str(p.validate_every), "--val_samples", str(p.val_samples),
        "--val-mode", "final", "--cfg-scale", str(p.cfg_scale), "--num-sampling-steps", str(p.sampling_steps),
        "--global-seed", str(GLOBAL_SEED), "--num-workers", "0", "--log-every", str(p.log_every),
    )  # fmt: skip
    return Stage(
        name=f"train-{tag}",
        description=(
            f"train {model} in image space ({p.image_size} px) for {p.epochs} epochs of batch {p.batch_size}, "
            f"validating (KID of {p.val_samples} samples) every {p.validate_every} epochs"
        ),
        command=command,
        deps=("data",),
        outputs=(lay.checkpoint(model), lay.experiment(model) / "metrics.csv"),
        clears=(lay.results(model),),
    )


def _sampling_args(model: str, p: Profile, lay: Layout, device: str) -> tuple[str, ...]:
    return (
        "--model", model,
        "--image_space", "--image-size", str(p.image_size), "--dataset", "oct", "--num-classes", str(NUM_CLASSES),
        "--fold", str(FOLD),
        "--ckpt", lay.shown(lay.checkpoint(model)),
        "--sample-dir", lay.shown(lay.synthetic),
        "--sampler", SAMPLER, "--num-sampling-steps", str(p.sampling_steps), "--cfg-scale", str(p.cfg_scale),
        "--per-proc-batch-size", str(p.sample_batch), "--global-seed", str(GLOBAL_SEED), "--device", device,
    )  # fmt: skip


def build_stages(p: Profile, lay: Layout, device: str) -> list[Stage]:
    """Every stage of the demo, in order.

    Args:
        p: the sizes (full or quick).
        lay: the output layout.
        device: "cpu" or a CUDA device for sampling, metrics and classification (train.py picks its own).

    Returns:
        The stages; each one's deps name earlier stages.
    """
    data = lay.shown(lay.data)
    stages = [
        Stage(
            name="data",
            description=(
                f"draw {p.num_images} phantom OCT B-scans ({p.image_size} px, 11 labels) with {p.folds} patient-wise "
                f"folds and a {p.test_frac:.0%} test split"
            ),
            command=(
                "python",
                "-m",
                "data.phantoms",
                "--kind",
                "oct",
                "--out",
                data,
                "--num-images",
                str(p.num_images),
                "--folds",
                str(p.folds),
                "--size",
                str(p.image_size),
                "--seed",
                "0",
                "--test-frac",
                str(p.test_frac),
            ),  # fmt: skip
            outputs=tuple(lay.data / f"{split}_{FOLD}.csv" for split in ("train", "val", "test")),
            clears=(lay.data,),
        ),
        Stage(
            name="labels",
            description=(
                f"write the training label vectors of fold {FOLD} as labels_{FOLD}/{{i}}.npy, the file layout "
                "sample_ddp.py reads (no latents in image space)"
            ),
            command=(
                "python",
                "-m",
                "demo.labels",
                "--data-path",
                data,
                "--dataset",
                "oct",
                "--features-path",
                lay.shown(lay.features),
                "--fold",
                str(FOLD),
            ),  # fmt: skip
            deps=("data",),
            outputs=(lay.features / f"labels_{FOLD}",),
        ),
    ]
    stages += [_train_stage(m, p, lay) for m in DEMO_MODELS]
    for m in DEMO_MODELS:
        stages.append(
            Stage(
                name=f"sample-val-{model_tag(m)}",
                description=(
                    f"synthesise the validation copy with {m}: one image per val_{FOLD}.csv label vector, "
                    f"{p.sampling_steps} {SAMPLER.upper()} steps, CFG {p.cfg_scale}"
                    + (" with GHG" if m.startswith("GeCA") else "")
                ),
                command=(
                    "python",
                    "sample_ddp_val.py",
                    *_sampling_args(m, p, lay, device),
                    "--in_channels",
                    "3",
                    "--data-path",
                    data,
                    "--expand_ratio",
                    "1",
                ),  # fmt: skip
                deps=("data", f"train-{model_tag(m)}"),
                outputs=(lay.sample_folder(m, p) / f"val_syn_{FOLD}.csv",),
                clears=(lay.sample_folder(m, p) / "gen_samples_val", lay.sample_folder(m, p) / f"val_syn_{FOLD}.csv"),
                resumable=True,
            )
        )
    for m in DEMO_MODELS:
        stages.append(
            Stage(
                name=f"sample-aug-{model_tag(m)}",
                description=(
                    f"synthesise the {p.expand_ratio}x augmentation set with {m}: every training label vector "
                    f"{p.expand_ratio} times, {p.sampling_steps} {SAMPLER.upper()} steps, CFG {p.cfg_scale}"
                ),
                command=(
                    "python",
                    "sample_ddp.py",
                    *_sampling_args(m, p, lay, device),
                    "--data-path",
                    lay.shown(lay.features),
                    "--expand_ratio",
                    str(p.expand_ratio),
                ),  # fmt: skip
                deps=("labels", f"train-{model_tag(m)}"),
                outputs=(lay.sample_folder(m, p) / f"train_syn_{FOLD}.csv",),
                clears=(lay.sample_folder(m, p) / "gen_samples", lay.sample_folder(m, p) / f"train_syn_{FOLD}.csv"),
                resumable=True,
            )
        )
    for m in DEMO_MODELS:
        folder = lay.sample_folder(m, p)
        stages.append(
            Stage(
                name=f"evaluate-{model_tag(m)}",
                description=(
                    f"KID and GG (Inception features) and LPIPS (when its AlexNet weights are present) of {m}'s "
                    "validation copy against the real validation images"
                ),
                command=(
                    "python",
                    "evaluate.py",
                    "--real",
                    data,
                    "--gen",
                    lay.shown(folder),
                    "--fold",
                    str(FOLD),
                    "--image-size",
                    str(p.image_size),
                    "--dataset",
                    "oct",
                    "--gg_extractor",
                    "inception",
                    "--device_list",
                    device,
                    "--num-workers",
                    "0",
                    "--cache-dir",
                    lay.shown(lay.feature_cache),
                ),  # fmt: skip
                deps=("data", f"sample-val-{model_tag(m)}"),
                outputs=(folder / f"metrics_{FOLD}.json",),
            )
        )
    conditions = [f"synthetic:{model_tag(m)}={lay.shown(lay.sample_folder(m, p))}" for m in DEMO_MODELS]
    stages.append(
        Stage(
            name="classify",
            description=(
                f"downstream multi-label classification on fold {FOLD}: geometric augmentation (baseline), no "
                f"augmentation, and real + each {p.expand_ratio}x synthetic set; tiny CNN, {p.cls_epochs} epoch(s), "
                f"{len(p.cls_seeds)} seed(s), paired test against the baseline"
            ),
            command=(
                "python",
                "classify.py",
                "--data-path",
                data,
                "--dataset",
                "oct",
                "--folds",
                str(FOLD),
                "--seeds",
                *map(str, p.cls_seeds),
                "--arch",
                "tiny",
                "--image-size",
                str(p.image_size),
                "--epochs",
                str(p.cls_epochs),
                "--batch-size",
                str(p.cls_batch),
                "--num-workers",
                "0",
                "--device",
                device,
                "--out",
                lay.shown(lay.classify),
                "--conditions",
                "geometric",
                "noaug",
                *conditions,
            ),  # fmt: skip
            deps=("data", *(f"sample-aug-{model_tag(m)}" for m in DEMO_MODELS)),
            outputs=(lay.classify / "results.json", lay.classify / "results.md"),
            # classify.py reuses finished runs by a key that covers the CSV files but not the images they list.
            clears=(lay.classify,),
            resumable=True,
        )
    )
    stages.append(
        Stage(
            name="report",
            description="write REPORT.md: dataset, training curves, samples, image-quality and classification tables",
            command=("python", "-m", "demo.report", "--out", lay.shown(lay.out)),
            deps=tuple(s.name for s in stages),
            outputs=(lay.report,),
        )
    )
    return stages
