"""The demo's stages: the exact command lines of the real entry scripts, and where their outputs land.

Pipeline (the paper's latent path of docs/REFERENCE.md §1 at demo size, then the classification study of
docs/DECISIONS.md §C6):
data -> domain VAE -> latents (torchrun, 2 processes) -> train (x3) -> validation copy (x3, GeCA also without GHG)
-> evaluate -> 1x augmentation set (x3) -> classify (real baseline first, then each synthetic set, then the
label-fidelity scores) -> report.
Stages are listed in priority order: with two parallel slots the long GeCA training starts first and the rest fills
the other slot. Every path in a command is relative to the repository root when the output folder lies inside it
(so the commands read like the README's), absolute otherwise; the commands run from the repository root.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from data.labels import RETINAMNIST_LABELS
from demo.profiles import CELLULAR_MODEL, DEMO_MODELS, FOLD, NUM_CLASSES, Profile
from infra.naming import model_tag, sample_folder_name
from infra.stages import REPO_ROOT, Stage
from infra.templates import fill_block

# The reference's ancestral sampler.
SAMPLER = "ddpm"
GLOBAL_SEED = 0
# Seed of the phantom set the study's domain VAE learns from (the study's images use seed 0).
VAE_CORPUS_SEED = 1
# Processes of the feature extraction (the reference launches it with torchrun).
EXTRACT_PROCS = 2
# Geometric augmentation of the demo's classifiers: phantom B-scans have a fixed orientation, so the protocol's
# full-turn rotation and strong jitter (docs/PAPER.md §B1) would destroy the label structures at 64 px.
DEMO_AUGMENTATION = (
    "--aug-rotation", "10", "--aug-jitter", "0.1", "--aug-zoom-range", "0.1", "--aug-crop-scale", "0.85",
)  # fmt: skip
# The stages' one-line descriptions: a block per stage, named like it, and a block per alternative wording.
STAGE_TEMPLATE = Path(__file__).with_name("templates") / "stages.md"


# describe(block, *sources, **values): a block of the stage descriptions with `values` and what else it names from
# `sources` filled in (infra.templates.fill_block).
describe = functools.partial(fill_block, STAGE_TEMPLATE)


@dataclass(frozen=True)
class Variant:
    """One synthetic set of the demo: a model sampled with or without Gene Heredity Guidance."""

    model: str
    ghg: bool = True

    @property
    def tag(self) -> str:
        """File-safe key: the model tag, plus "-noghg" for the ablation."""
        return model_tag(self.model) + ("" if self.ghg else "-noghg")

    @property
    def label(self) -> str:
        """Row label of the report's tables."""
        return self.model + ("" if self.ghg else " (no GHG)")


# Every synthetic set: one per model, plus the cellular model without GHG (a fresh seed cell at every step).
VARIANTS: tuple[Variant, ...] = (*(Variant(m) for m in DEMO_MODELS), Variant(CELLULAR_MODEL, ghg=False))
# The label-fidelity name of the domain VAE's reconstructions of the real validation images.
RECON_SET = "VAE-reconstruction"
# The sets that also get an augmentation set and enter the classification study (GeCA without GHG gets a validation
# copy only: image quality and pixel statistics, within the demo's time budget).
STUDIED: tuple[Variant, ...] = tuple(v for v in VARIANTS if v.ghg)
# Per phantom kind: the product's --dataset value and the number of label columns.
DATASET_FLAG = {"oct": "oct", "fundus": "retinamnist"}
NUM_CLASSES_OF = {"oct": NUM_CLASSES, "fundus": len(RETINAMNIST_LABELS)}


@dataclass
class Layout:
    """Where each stage writes, under the output folder `out` (absolute); the folders are set at construction.

    Attributes:
        out: the fold's folder (the demo's output folder: everything of its one OCT fold lies under it).
        fold: the fold every stage runs (the study's pooled conditions use classify.py's "{fold}" placeholder).
        kind: phantom kind, "oct" or "fundus" (RetinaMNIST layout).
        shared: the study's folder of what its folds share (phantoms, domain VAE and its corpus, the synthetic
            sets, whose names carry the fold, and the classification runs), or None (the demo: `out`).
        vae_corpus: the domain VAE learns from a separate phantom set in `{shared}/data/` (the study, like the
            paper's pretrained SD-VAE, shares one VAE across folds) instead of the fold's training images.
    """

    out: Path
    fold: int | str = FOLD
    kind: str = "oct"
    shared: Path | None = None
    vae_corpus: bool = False

    def __post_init__(self) -> None:
        base = self.out if self.shared is None else self.shared  # where the shared outputs live
        self.dataset = DATASET_FLAG[self.kind]  # the scripts' --dataset value
        self.num_classes = NUM_CLASSES_OF[self.kind]
        self.data = base / "data" / f"{self.kind}_phantom"
        # The images the domain VAE learns from (fold FOLD's training split of this dataset).
        self.vae_data = base / "data" / f"{self.kind}_vae_corpus" if self.vae_corpus else self.data
        self.vae_run = base / f"vae_{self.kind}"  # train_vae.py's output (checkpoints, reconstructions, report)
        self.vae = self.vae_run / "vae"  # the trained VAE as a diffusers folder: what `--vae` receives
        self.synthetic, self.classify = base / "synthetic", base / "classify"
        self.features, self.feature_cache = self.out / "features", self.out / "feature_cache"
        self.reconstructions = self.out / "reconstructions"  # evaluate.py --recon-dir: the VAE's reconstructions
        # The reconstructions of the split the validation copies copy (OCT: val, with their val_syn CSV, scored by
        # GAN-test; RetinaMNIST: test, PNG files named by index).
        self.recon_val = self.reconstructions / ("real_test" if self.dataset == "retinamnist" else "real_val")
        self.assets, self.report = self.out / "report_assets", self.out / "REPORT.md"
        self.config = self.out / "demo_config.json"

    def shown(self, path: Path) -> str:
        """`path` as written in a command: relative to the repository root when inside it."""
        path = Path(path).resolve()
        return str(path.relative_to(REPO_ROOT)) if REPO_ROOT in path.parents else str(path)

    def results(self, model: str) -> Path:
        """`--results-dir` of one model (one folder per model, emptied before its training)."""
        return self.out / "results" / model_tag(model)

    def experiment(self, model: str) -> Path:
        """train.py's experiment folder: index 000 in an empty results folder (docs/REFERENCE.md §3.2 naming)."""
        return self.results(model) / f"000-{model_tag(model)}-{self.fold}"

    def checkpoint(self, model: str) -> Path:
        return self.experiment(model) / "checkpoints" / "best_ckpt.pt"

    def sample_folder(self, v: Variant, p: Profile) -> Path:
        """The folder both sampling scripts write for one synthetic set (docs/REFERENCE.md §3.3 name)."""
        return self.synthetic / sample_folder_name(
            v.model, self.fold, p.sampling_steps, self.checkpoint(v.model), p.image_size, str(self.vae),
            p.cfg_scale, GLOBAL_SEED, sampler=SAMPLER, ghg=v.ghg,
        )  # fmt: skip


def _data_stage(p: Profile, lay: Layout, corpus: bool = False) -> Stage:
    """The phantoms every fold uses, or with `corpus` the separate set the study's domain VAE learns from."""
    root = lay.vae_data if corpus else lay.data
    command = (
        "python", "-m", "data.phantoms", "--kind", lay.kind, "--out", lay.shown(root),
        "--num-images", str(p.num_images), "--folds", str(p.folds), "--size", str(p.image_size),
        "--seed", str(VAE_CORPUS_SEED if corpus else 0), "--test-frac", str(p.test_frac),
        *(("--retinamnist-npz",) if lay.kind == "fundus" else ()),
    )  # fmt: skip
    description = describe(
        "data",
        p.as_dict(),
        phantoms=describe(f"phantoms-{lay.kind}"),
        num_classes=lay.num_classes,
        test_frac=f"{p.test_frac:.0%}",
        corpus=describe("corpus", seed=VAE_CORPUS_SEED) if corpus else "",
    )
    outputs = tuple(root / f"{split}_{FOLD}.csv" for split in ("train", "val", "test"))
    return Stage("vae-data" if corpus else "data", description, command, outputs=outputs, clears=(root,))


def _vae_stage(p: Profile, lay: Layout) -> Stage:
    command = (
        "python", "train_vae.py", "--data-path", lay.shown(lay.vae_data), "--dataset", lay.dataset,
        "--fold", str(FOLD), "--image-size", str(p.image_size), "--out", lay.shown(lay.vae_run),
        "--steps", str(p.vae_steps), "--batch-size", str(p.vae_batch),
        "--global-seed", str(GLOBAL_SEED), "--num-workers", "0",
    )  # fmt: skip
    source = describe("source-corpus") if lay.vae_corpus else describe("source-fold", fold=FOLD)
    description = describe("train-vae", p.as_dict(), source=source)
    deps = ("vae-data",) if lay.vae_corpus else ("data",)
    return Stage("train-vae", description, command, deps, outputs=(lay.vae / "config.json",), clears=(lay.vae_run,))


def _extract_stage(p: Profile, lay: Layout) -> Stage:
    command = (
        "python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(EXTRACT_PROCS),
        "extract_features.py", "--data-path", lay.shown(lay.data), "--dataset", lay.dataset,
        "--features-path", lay.shown(lay.features), "--vae", lay.shown(lay.vae), "--image-size", str(p.image_size),
        "--global-batch-size", "32", "--fold", str(lay.fold), "--global-seed", str(GLOBAL_SEED),
        "--num-workers", "0",
    )  # fmt: skip
    description = describe("extract", fold=lay.fold, latent=p.image_size // 8, procs=EXTRACT_PROCS)
    outputs = (lay.features / f"features_{lay.fold}", lay.features / f"labels_{lay.fold}")
    return Stage("extract", description, command, ("train-vae",), outputs, clears=(lay.features,))


def _train_stage(model: str, p: Profile, lay: Layout) -> Stage:
    command = (
        "python", "train.py",
        "--model", model, "--feature-path", lay.shown(lay.features), "--vae", lay.shown(lay.vae),
        "--image-size", str(p.image_size),
        "--data-path", lay.shown(lay.data), "--dataset", lay.dataset, "--num-classes", str(lay.num_classes),
        "--fold", str(lay.fold),
        "--results-dir", lay.shown(lay.results(model)),
        "--global-batch-size", str(p.batch_size), "--epochs", str(p.epochs_of(model)),
        "--lr", str(p.lr), "--ema-decay", str(p.ema_decay),
        "--validate_every", str(p.validate_every_of(model)), "--val_samples", str(p.val_samples),
        "--best-rule", p.best_rule,
        "--val-mode", "final", "--cfg-scale", str(p.cfg_scale), "--num-sampling-steps", str(p.sampling_steps),
        "--global-seed", str(GLOBAL_SEED), "--num-workers", "0", "--log-every", str(p.log_every),
    )  # fmt: skip
    description = describe(
        "train",
        p.as_dict(),
        model=model,
        latent=p.image_size // 8,
        epochs=p.epochs_of(model),
        validate_every=p.validate_every_of(model),
    )
    outputs = (lay.checkpoint(model), lay.experiment(model) / "metrics.csv")
    return Stage(f"train-{model_tag(model)}", description, command, ("extract",), outputs, (lay.results(model),))


def _sample_stage(v: Variant, p: Profile, lay: Layout, device: str, aug: bool) -> Stage:
    """sample_ddp_val.py's validation copy of one synthetic set (one image per validation label vector) or, with
    `aug`, sample_ddp.py's augmentation set (every training label vector expand_ratio times)."""
    folder = lay.sample_folder(v, p)
    generator = v.model  # with the words on guidance for the cellular model
    if v.model == CELLULAR_MODEL:
        generator = describe("generator-ghg" if v.ghg else "generator-noghg", model=v.model)
    if aug:
        script, data, ratio, split, images = "sample_ddp.py", lay.features, p.expand_ratio, "train", "gen_samples"
    else:
        script, data, ratio, split, images = "sample_ddp_val.py", lay.data, 1, "val", "gen_samples_val"
    labels = folder / f"{split}_syn_{lay.fold}.csv"
    command = (
        "python", script,
        "--model", v.model, "--image-size", str(p.image_size), "--vae", lay.shown(lay.vae),
        "--dataset", lay.dataset, "--num-classes", str(lay.num_classes), "--fold", str(lay.fold),
        "--ckpt", lay.shown(lay.checkpoint(v.model)),
        "--sample-dir", lay.shown(lay.synthetic),
        "--sampler", SAMPLER, "--num-sampling-steps", str(p.sampling_steps), "--cfg-scale", str(p.cfg_scale),
        "--per-proc-batch-size", str(p.sample_batch), "--global-seed", str(GLOBAL_SEED), "--device", device,
        *(() if v.ghg else ("--no-ghg",)), "--data-path", lay.shown(data), "--expand_ratio", str(ratio),
    )  # fmt: skip
    step = f"sample-{'aug' if aug else 'val'}"  # the block; the fold a source, as only the validation copy names it
    description = describe(step, p.as_dict(), {"fold": lay.fold}, generator=generator, sampler=SAMPLER.upper())
    deps = ("extract" if aug else "data", "train-vae", f"train-{model_tag(v.model)}")
    name = f"{step}-{v.tag}"
    return Stage(name, description, command, deps, (labels,), clears=(folder / images, labels), resumable=True)


def _evaluate_command(p: Profile, lay: Layout, device: str, *extra: str, recon: bool = True) -> tuple[str, ...]:
    """evaluate.py on the demo's real data with Inception features for KID and GG and the shared feature cache;
    with `recon`, also against the domain VAE's reconstructions (written where the others read them)."""
    return (
        "python", "evaluate.py", "--real", lay.shown(lay.data), "--fold", str(lay.fold),
        "--image-size", str(p.image_size), "--dataset", lay.dataset, "--gg_extractor", "inception",
        "--device_list", device, "--num-workers", "0", "--cache-dir", lay.shown(lay.feature_cache), *extra,
        *(("--recon-vae", lay.shown(lay.vae), "--recon-dir", lay.shown(lay.reconstructions)) if recon else ()),
    )  # fmt: skip


def _reference_stage(p: Profile, lay: Layout, device: str, recon: bool) -> Stage:
    """evaluate.py --reference-only: the real images' features (while the VAE trains), then those of the VAE's
    reconstructions (once it has), cached for every evaluate stage (otherwise the first two, running side by side,
    would both compute them)."""
    name = "reference-recon" if recon else "reference-features"
    out = lay.feature_cache / f"{name}.json"
    command = _evaluate_command(p, lay, device, "--reference-only", "--out", lay.shown(out), recon=recon)
    deps = ("data", "train-vae", "reference-features") if recon else ("data",)
    return Stage(name, describe(name), command, deps, (out,))


def _evaluate_stage(v: Variant, p: Profile, lay: Layout, device: str) -> Stage:
    folder = lay.sample_folder(v, p)
    command = _evaluate_command(p, lay, device, "--gen", lay.shown(folder))
    deps = ("data", "reference-recon", f"sample-val-{v.tag}")
    outputs = (folder / f"metrics_{lay.fold}.json",)
    return Stage(f"evaluate-{v.tag}", describe("evaluate", label=v.label), command, deps, outputs)


def _classify_command(
    p: Profile, lay: Layout, device: str, conditions: list[str], folds: tuple[int, ...] | None = None
) -> tuple[str, ...]:
    """classify.py on `lay`'s data for `conditions`, on `folds` (default: the layout's fold)."""
    folds = (lay.fold,) if folds is None else folds
    return (
        "python", "classify.py", "--data-path", lay.shown(lay.data), "--dataset", lay.dataset,
        "--folds", *map(str, folds),
        "--seeds", *map(str, p.cls_seeds), "--arch", "tiny", "--image-size", str(p.image_size),
        "--epochs", str(p.cls_epochs), "--batch-size", str(p.cls_batch), "--lr", str(p.cls_lr), *DEMO_AUGMENTATION,
        "--num-workers", "0", "--device", device, "--out", lay.shown(lay.classify), "--conditions", *conditions,
    )  # fmt: skip


def _synthetic_conditions(v: Variant, p: Profile, lay: Layout) -> list[str]:
    """classify.py's real + synthetic and synthetic-only conditions of one studied set."""
    folder = lay.shown(lay.sample_folder(v, p))
    return [f"synthetic:{v.tag}={folder}", f"synthetic-only:{v.tag}={folder}"]


def all_conditions(p: Profile, lay: Layout) -> list[str]:
    """Every classify.py condition of the study: the real-data ones, real + synthetic and synthetic only for each
    studied set, and, scored only, the validation copies without an augmentation set (GeCA without GHG) and the
    ceiling of every latent model, the domain VAE's reconstructions of the real validation images (written by
    reference-recon). A layout whose fold is classify.py's `{fold}` placeholder gives the conditions of every fold."""
    conditions = ["geometric", "noaug", *(c for v in STUDIED for c in _synthetic_conditions(v, p, lay))]
    conditions += [f"gan-test:{v.tag}={lay.shown(lay.sample_folder(v, p))}" for v in VARIANTS if v not in STUDIED]
    return [*conditions, f"gan-test:{RECON_SET}={lay.shown(lay.recon_val)}"]


def _classify_stages(p: Profile, lay: Layout, device: str) -> tuple[Stage, list[Stage], Stage]:
    """The study in parts that share `{out}/classify/runs/` (classify.py reuses finished runs): the real-data
    conditions (which need no synthetic data, so they run beside the VAE training), one part per synthetic set
    (real + synthetic, and synthetic only), then the whole study, which trains nothing new and adds the
    label-fidelity scores of every validation copy."""
    results = (lay.classify / "results.json",)
    description = describe("classify-real", p.as_dict(), fold=lay.fold, seeds=len(p.cls_seeds))
    command = _classify_command(p, lay, device, ["geometric", "noaug"])
    real = Stage("classify-real", description, command, ("data",), results, (lay.classify,), resumable=True)
    parts = []
    for v in STUDIED:
        description = describe("classify-set", p.as_dict(), label=v.label)
        command = _classify_command(p, lay, device, ["geometric", *_synthetic_conditions(v, p, lay)])
        deps = ("classify-real", f"sample-val-{v.tag}", f"sample-aug-{v.tag}")
        parts.append(Stage(f"classify-{v.tag}", description, command, deps, results, resumable=True))
    description = describe("classify", fold=lay.fold)
    command = _classify_command(p, lay, device, all_conditions(p, lay))
    scored_only = (f"sample-val-{v.tag}" for v in VARIANTS if v not in STUDIED)
    deps = ("classify-real", *(s.name for s in parts), "reference-recon", *scored_only)
    whole = Stage("classify", description, command, deps, (*results, lay.classify / "results.md"), resumable=True)
    return real, parts, whole


def build_stages(p: Profile, lay: Layout, device: str) -> list[Stage]:
    """Every stage of the demo, in priority order.

    Args:
        p: the sizes (full or quick).
        lay: the output layout.
        device: "cpu" or a CUDA device for sampling, metrics and classification (train.py picks its own).

    Returns:
        The stages; each one's deps name earlier stages.
    """
    classify_real, classify_parts, classify_all = _classify_stages(p, lay, device)
    stages = [_data_stage(p, lay), _vae_stage(p, lay), classify_real, _reference_stage(p, lay, device, recon=False)]
    stages.append(_extract_stage(p, lay))
    # GeCA trains longest: it goes first, the baselines fill the other slot.
    stages += [_train_stage(m, p, lay) for m in sorted(DEMO_MODELS, key=lambda m: m != CELLULAR_MODEL)]
    stages.append(_reference_stage(p, lay, device, recon=True))
    parts = dict(zip(STUDIED, classify_parts))
    for v in sorted(VARIANTS, key=lambda v: v.model == CELLULAR_MODEL):
        stages.append(_sample_stage(v, p, lay, device, aug=False))
        if v in parts:
            stages.append(_sample_stage(v, p, lay, device, aug=True))
        stages.append(_evaluate_stage(v, p, lay, device))
        if v in parts:
            stages.append(parts[v])
    stages.append(classify_all)
    command = ("python", "-m", "demo.report", "--out", lay.shown(lay.out))
    return [*stages, Stage("report", describe("report"), command, tuple(s.name for s in stages), (lay.report,))]
