"""Image metrics of a synthetic validation set: KID, LPIPS diversity and the FLD generalization gap
(docs/REFERENCE.md §3.5, §9).

    python evaluate.py --real ./oct_multilabel/ \
        --gen ./synthetic_oct/GeCA-S-GS-fold-0-nstep-250-best_ckpt-size-256-vae-ema-cfg-1.5-seed-0/ \
        --fold 0 --image-size 256 --device_list cuda:0

Reads `{gen}/val_syn_{fold}.csv` (the images `sample_ddp_val.py` wrote) and the real split it copies:
`{real}/val_{fold}.csv` (RetinaMNIST: its test split). GG also needs the real training split. Prints a table and
writes `{gen}/metrics_{fold}.json`. A metric whose pretrained weights are missing is reported as unavailable, with the
file it needs, and the others still run. Features are cached per image set under `{gen}/.feature_cache/`.

Real images go to KID centre-cropped to `--image-size`, and to GG whole (the GG extractor resizes them to its input,
224 x 224 for DINOv2), as the reference does; `--gg-real-crop` gives GG the cropped images instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torchvision import transforms
from tqdm import tqdm

from data.datasets import RETINAMNIST_NPZ, RetinaMNISTDataset, fold_csv_path
from data.select import add_dataset_arguments, pick_dataset
from data.transforms import center_crop_arr
from data.validate import check_images, read_fold_csv
from infra.argtypes import non_negative_int, positive_int
from infra.atomic_io import atomic_write_text
from infra.distributed import pick_device
from infra.errors import UserError, run_main
from infra.flags import (
    add_fold_flag,
    add_image_size_flag,
    add_inception_weights_flag,
    add_num_workers_flag,
    add_tf32_flag,
)
from infra.logs import create_logger
from infra.precision import set_tf32
from infra.provenance import file_identity
from infra.seeding import seed_everything
from infra.tracker import Tracker
from metrics.dino import dino_transform, load_dino
from metrics.features import (
    ImageSet,
    MetricUnavailable,
    cached_features,
    extract_features,
    file_image_set,
    pil_to_uint8,
)
from metrics.fld import generalization_gap
from metrics.inception import load_inception
from metrics.kid import kid, kid_standard_error
from metrics.lpips_diversity import load_lpips, lpips_diversity
from metrics.reconstruction import reconstruction_set

KID_SUBSETS = 100  # torchmetrics' default, used by the reference
GG_EXTRACTORS = ("dino", "inception", "clip")
PACKAGES = ("torch", "torchvision", "torchmetrics", "torch-fidelity", "timm", "lpips", "numpy")
# Offsets added to --seed so each metric draws from its own stream (one metric failing does not shift another).
SEED_OFFSETS = {"GG": 0, "KID": 1, "LPIPS": 2}


class _RetinaMNISTImages:
    """Image i of a RetinaMNIST split as RGB, whole or centre-cropped like the training images (picklable)."""

    def __init__(self, dataset: RetinaMNISTDataset, image_size: int | None):
        self.dataset = dataset
        self.image_size = image_size

    def __call__(self, index: int) -> Image.Image:
        image, _ = self.dataset[index]
        rgb = image.convert("RGB")
        return rgb if self.image_size is None else center_crop_arr(rgb, self.image_size)


def real_image_set(real: str, kind: str, split: str, fold: int, image_size: int | None) -> ImageSet:
    """Real images of one split as RGB: with the ADM centre crop to `image_size` (KID), or whole (None; GG).

    Args:
        real: dataset root (--real).
        kind: dataset kind (data.select).
        split: "train", "val" or "test".
        fold: fold of the CSV kinds (RetinaMNIST has fixed splits).
        image_size: crop size (--image-size), or None for the whole image.
    """
    if kind == "retinamnist":
        dataset = RetinaMNISTDataset(real, split)
        keys = [dataset.source_name(i) for i in range(len(dataset))]
        identity = f"crop={image_size}:{file_identity(Path(real) / RETINAMNIST_NPZ)}"
        return ImageSet(f"real_{split}", keys, _RetinaMNISTImages(dataset, image_size), identity)
    csv_path = fold_csv_path(real, split, fold)
    frame = read_fold_csv(csv_path)
    # Every file must be usable before any feature is computed. No size rule: the reference upsamples real images
    # smaller than --image-size (RetinaMNIST's 224 px to 256).
    check_images(frame, real, str(csv_path))
    paths = [os.path.join(real, name) for name in frame["filename"].astype(str)]
    return file_image_set(f"real_{split}", paths, image_size)


def generated_image_set(gen: str, fold: int) -> ImageSet:
    """Exactly the images listed in `{gen}/val_syn_{fold}.csv`, loaded as they are (docs/DECISIONS.md §C2.7)."""
    frame = read_fold_csv(Path(gen) / f"val_syn_{fold}.csv")
    check_images(frame, gen, str(Path(gen) / f"val_syn_{fold}.csv"))
    paths = [os.path.join(gen, name) for name in frame["filename"].astype(str)]
    return file_image_set("generated", paths, None)


def dataset_kind(real: str, dataset: str | None, logger: logging.Logger) -> str:
    """--dataset, else the path rule of the reference; a path no rule matches is read as a generic fold-CSV set."""
    try:
        return pick_dataset(real, dataset)
    except ValueError:
        logger.info(f"--real {real} matches no dataset rule; reading its fold CSVs (pass --dataset to choose)")
        return "csv"


class FeatureBank:
    """Loads each feature network once and serves (cached) features of image sets.

    Args:
        args: parsed command line (weights flags, batch size, workers).
        device: where the networks run.
        cache_dir: feature cache folder, or None.
    """

    def __init__(self, args: argparse.Namespace, device: torch.device, cache_dir: Path | None):
        self.args = args
        self.device = device
        self.cache_dir = cache_dir
        self._models: dict[str, tuple[nn.Module, Callable] | MetricUnavailable] = {}

    def _load(self, name: str) -> tuple[nn.Module, Callable[[Image.Image], torch.Tensor]]:
        if name == "inception":
            return load_inception(self.args.inception_weights, self.device), pil_to_uint8
        if name == "dino":
            return load_dino(self.args.dino_weights, self.device), dino_transform()
        raise MetricUnavailable(
            "the CLIP ViT-B/32 extractor needs OpenAI's `clip` package and its weights, which this installation "
            "does not provide; use --gg_extractor dino or inception"
        )

    def model(self, name: str) -> tuple[nn.Module, Callable[[Image.Image], torch.Tensor]]:
        """(network, PIL -> tensor transform) of an extractor; raises MetricUnavailable when it cannot load."""
        if name not in self._models:
            try:
                self._models[name] = self._load(name)
            except MetricUnavailable as err:
                self._models[name] = err
        entry = self._models[name]
        if isinstance(entry, MetricUnavailable):
            raise entry
        return entry

    def weights_file(self, name: str) -> str:
        """The weights file the extractor was loaded from."""
        return self.model(name)[0].weights_file

    def features(self, name: str, images: ImageSet) -> torch.Tensor:
        """(N, D) float32 CPU features of an image set."""
        net, transform = self.model(name)
        key = f"{name}:{file_identity(net.weights_file)}"

        def compute() -> torch.Tensor:
            return extract_features(
                images,
                net,
                transform,
                self.device,
                self.args.batch_size,
                self.args.num_workers,
                desc=f"{name} features of {images.name} ({len(images)} images)",
            )

        return cached_features(images, key, compute, self.cache_dir)


def compute_gg(
    bank: FeatureBank, extractor: str, train: ImageSet, test: ImageSet, gen: ImageSet, seed: int
) -> dict[str, Any]:
    """GG = 100 (NLL(train) - NLL(test)) of the mixture centred on the generated features (docs/REFERENCE.md §9.3,
    docs/PAPER.md §B3)."""
    if len(test) < 2:
        raise MetricUnavailable(f"GG needs at least 2 real test images, got {len(test)}")
    feats = {
        name: bank.features(extractor, images).to(bank.device)
        for name, images in (("train", train), ("test", test), ("gen", gen))
    }
    value = generalization_gap(feats["train"], feats["test"], feats["gen"], torch.Generator().manual_seed(seed))
    return {"value": value, "extractor": extractor, "weights": bank.weights_file(extractor)}


def compute_kid(bank: FeatureBank, real_images: ImageSet, gen_images: ImageSet, seed: int) -> dict[str, Any]:
    """KID over 100 subsets of size len(generated) // 4 (docs/REFERENCE.md §9.1), and its standard error over the
    generated images (metrics.kid.kid_standard_error)."""
    subset_size = len(gen_images) // 4
    if not 2 <= subset_size <= len(real_images):
        raise MetricUnavailable(
            f"KID subset size len(generated) // 4 = {subset_size} must lie in [2, {len(real_images)} real images]"
        )
    real = bank.features("inception", real_images)
    fake = bank.features("inception", gen_images)
    mean, std = kid(real, fake, KID_SUBSETS, subset_size, torch.Generator().manual_seed(seed))
    se = kid_standard_error(real, fake) if len(fake) >= 3 else math.nan
    return {
        "mean": mean,
        "std": std,
        "se": se,
        "mean_x1e3": mean * 1e3,
        "std_x1e3": std * 1e3,
        "se_x1e3": se * 1e3,
        "subsets": KID_SUBSETS,
        "subset_size": subset_size,
        "weights": bank.weights_file("inception"),
    }


def compute_lpips(args: argparse.Namespace, device: torch.device, images: ImageSet, seed: int) -> dict[str, Any]:
    """LPIPS diversity over consecutive pairs of the seeded shuffle of the generated images (docs/REFERENCE.md §9.2)."""
    net = load_lpips(args.alexnet_weights, device)
    to_tensor = transforms.ToTensor()
    progress = tqdm(total=max(len(images) - 1, 0), desc="LPIPS pairs", unit="pair", leave=False)

    @torch.no_grad()
    def distance(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        a = torch.stack([to_tensor(images.load(int(i))) for i in first]).to(device)
        b = torch.stack([to_tensor(images.load(int(i))) for i in second]).to(device)
        progress.update(len(first))
        return net(a, b, normalize=True).reshape(-1)

    try:
        mean, std = lpips_diversity(len(images), distance, torch.Generator().manual_seed(seed), args.batch_size)
    finally:
        progress.close()
    return {"mean": mean, "std": std, "pairs": len(images) - 1, "weights": net.weights_file}


def run_metric(name: str, compute: Callable[[], dict[str, Any]], logger: logging.Logger) -> dict[str, Any]:
    """Run one metric; a MetricUnavailable becomes {"available": False, "reason": ...} and a log line."""
    logger.info(f"computing {name}")
    try:
        return {"available": True, **compute()}
    except MetricUnavailable as err:
        logger.warning(f"{name} unavailable: {err}")
        return {"available": False, "reason": str(err)}


# Rows of the printed table: (results key, label).
TABLE_ROWS = (
    ("KID", "KID (x1e3)"),
    ("LPIPS", "LPIPS diversity"),
    ("GG", "GG"),
    ("KID_recon", "KID vs recon"),
    ("GG_recon", "GG vs recon"),
    ("KID_floor", "KID recon-real"),
    ("GG_floor", "GG recon-real"),
)


def format_entry(name: str, entry: dict[str, Any]) -> str:
    """One metric as text: KID x 1e3 as mean ± std (standard error), LPIPS as mean ± std, GG as a number."""
    if not entry["available"]:
        return f"unavailable: {entry['reason']}"
    if name.startswith("KID"):
        return f"{entry['mean_x1e3']:.4f} ± {entry['std_x1e3']:.4f} (standard error {entry['se_x1e3']:.4f})"
    if name == "LPIPS":
        return f"{entry['mean']:.4f} ± {entry['std']:.4f}"
    return f"{entry['value']:.4f} ({entry['extractor']} features)"


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """The printed summary, one metric a line, or the reason a metric is missing (the --recon-vae rows only when
    computed)."""
    return "\n".join(
        f"{label:<16} {format_entry(name, results[name])}" for name, label in TABLE_ROWS if name in results
    )


def package_versions() -> dict[str, str]:
    """Installed versions of the packages the numbers depend on."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


@dataclass
class References:
    """The real image sets a sample folder is compared with (and the VAE's reconstructions of them, with
    --recon-vae): KID's centre-cropped split, GG's whole test and train splits."""

    kind: str
    split: str
    real: ImageSet
    gg_test: ImageSet
    train: ImageSet | None
    train_error: str
    recon_val: ImageSet | None = None
    recon_root: Path | None = None

    def require_train(self) -> ImageSet:
        if self.train is None:
            raise MetricUnavailable(self.train_error)
        return self.train

    def recon_train(self, args: argparse.Namespace, device: torch.device) -> ImageSet:
        """The reconstructions of the centre-cropped training split (built on first use)."""
        crop = (
            self.require_train()
            if args.gg_real_crop
            else real_image_set(args.real, self.kind, "train", args.fold, args.image_size)
        )
        return reconstruction_set(crop, args.recon_vae, self.recon_root, device, args.batch_size)


def reference_sets(args: argparse.Namespace, device: torch.device, logger: logging.Logger) -> References:
    """The real split the generated images copy (RetinaMNIST: test), the real training split, and with --recon-vae
    the reconstructions of the copied split (written to --recon-dir with its labels, see metrics/reconstruction.py).

    KID's real images are centre-cropped to --image-size; GG's are whole, the extractor resizes them
    (docs/REFERENCE.md §9.1, §9.3), unless --gg-real-crop.
    """
    kind = dataset_kind(args.real, args.dataset, logger)
    split = "test" if kind == "retinamnist" else "val"
    real = real_image_set(args.real, kind, split, args.fold, args.image_size)
    gg_crop = args.image_size if args.gg_real_crop else None
    gg_test = real if args.gg_real_crop else real_image_set(args.real, kind, split, args.fold, None)
    try:
        train, train_error = real_image_set(args.real, kind, "train", args.fold, gg_crop), ""
    except FileNotFoundError as err:
        train, train_error = None, f"GG needs the real training split: {err}"
    refs = References(kind, split, real, gg_test, train, train_error)
    if args.recon_vae is not None:
        if args.recon_dir:
            refs.recon_root = Path(args.recon_dir)
        elif args.gen:
            refs.recon_root = Path(args.gen).resolve().parent / "reconstructions"
        else:
            raise UserError("--recon-vae without --gen needs --recon-dir: where the reconstructions go")
        labels = None if kind == "retinamnist" else read_fold_csv(fold_csv_path(args.real, split, args.fold))
        refs.recon_val = reconstruction_set(
            real,
            args.recon_vae,
            refs.recon_root,
            device,
            args.batch_size,
            labels=None if labels is None else labels.drop(columns=["filename"]),
            csv_name=f"val_syn_{args.fold}.csv",
        )
        logger.info(f"VAE reconstructions of the real {split} images: {Path(refs.recon_val.keys[0]).parent}")
    return refs


def cache_references(args: argparse.Namespace, bank: FeatureBank, refs: References, logger: logging.Logger) -> dict:
    """--reference-only: compute and cache the features of every real (and reconstructed) set, nothing else; returns
    {"reference_only", "cache_dir", "sets": [[extractor, set name, images]]} (written to --out when given)."""
    sets = [("inception", refs.real)]
    if refs.train is not None:
        sets += [(args.gg_extractor, refs.gg_test), (args.gg_extractor, refs.train)]
    if refs.recon_val is not None:
        sets += [("inception", refs.recon_val), (args.gg_extractor, refs.recon_val)]
        if refs.train is not None:
            sets.append((args.gg_extractor, refs.recon_train(args, bank.device)))
    done = []
    for extractor, images in sets:
        try:
            bank.features(extractor, images)
            done.append([extractor, images.name, len(images)])
        except MetricUnavailable as err:
            logger.warning(f"{extractor} features of {images.name} unavailable: {err}")
    logger.info(f"cached the features of {len(done)} reference set(s) in {bank.cache_dir}")
    return {"reference_only": True, "cache_dir": str(bank.cache_dir), "sets": done}


def compare(
    args: argparse.Namespace, bank: FeatureBank, refs: References, gen_set: ImageSet, logger: logging.Logger
) -> dict[str, dict[str, Any]]:
    """Every metric of the generated set; with --recon-vae also against the reconstructions, and the
    reconstructions against the real images (the floor every latent model of that VAE shares)."""
    kid_seed, gg_seed = args.seed + SEED_OFFSETS["KID"], args.seed + SEED_OFFSETS["GG"]

    def gg(train: Callable[[], ImageSet], test: ImageSet, gen: ImageSet) -> Callable[[], dict[str, Any]]:
        return lambda: compute_gg(bank, args.gg_extractor, train(), test, gen, gg_seed)

    # The reference's order: GG, KID, LPIPS; each metric with its own seeded stream.
    results = {
        "GG": run_metric("GG", gg(refs.require_train, refs.gg_test, gen_set), logger),
        "KID": run_metric("KID", lambda: compute_kid(bank, refs.real, gen_set, kid_seed), logger),
        "LPIPS": run_metric(
            "LPIPS", lambda: compute_lpips(args, bank.device, gen_set, args.seed + SEED_OFFSETS["LPIPS"]), logger
        ),
    }
    recon = refs.recon_val
    if recon is not None:
        results["KID_recon"] = run_metric(
            "KID vs reconstructions", lambda: compute_kid(bank, recon, gen_set, kid_seed), logger
        )
        results["GG_recon"] = run_metric(
            "GG vs reconstructions", gg(lambda: refs.recon_train(args, bank.device), recon, gen_set), logger
        )
        results["KID_floor"] = run_metric(
            "KID of the reconstructions", lambda: compute_kid(bank, refs.real, recon, kid_seed), logger
        )
        results["GG_floor"] = run_metric(
            "GG of the reconstructions", gg(refs.require_train, refs.gg_test, recon), logger
        )
    return results


def main(args: argparse.Namespace) -> dict[str, Any]:
    logger = create_logger("evaluate")
    set_tf32(args.tf32)
    device = pick_device(0, args.device_list[0], cpu_fallback=True, log=logger.info)
    logger.info(f"device: {device}")
    seed_everything(args.seed)
    if args.gen is None and not args.reference_only:
        raise UserError("--gen is required (the sample folder to evaluate), except with --reference-only")
    if args.reference_only and args.no_cache:
        raise UserError("--reference-only computes features to cache them: it cannot run with --no-cache")
    if args.reference_only and not (args.cache_dir or args.gen):
        raise UserError("--reference-only needs --cache-dir: where the features are kept")
    cache_dir = None if args.no_cache else Path(args.cache_dir or Path(args.gen) / ".feature_cache")

    # Image sets: the real references, then the generated CSV's files.
    refs = reference_sets(args, device, logger)
    bank = FeatureBank(args, device, cache_dir)
    if args.reference_only:
        summary = cache_references(args, bank, refs, logger)
        if args.out:
            atomic_write_text(Path(args.out), json.dumps(summary, indent=2) + "\n")
        return summary
    out_path = Path(args.out) if args.out else Path(args.gen) / f"metrics_{args.fold}.json"
    gen_set = generated_image_set(args.gen, args.fold)
    counts = {
        "generated": len(gen_set),
        f"real_{refs.split}": len(refs.real),
        "real_train": 0 if refs.train is None else len(refs.train),
    }
    logger.info(f"dataset {refs.kind}, images: {counts}")
    results = compare(args, bank, refs, gen_set, logger)
    recon_folder = None if refs.recon_val is None else str(Path(refs.recon_val.keys[0]).parent)
    kind = refs.kind

    # Report: console table, JSON file, optional wandb.
    print(format_table(results))
    report = {
        "metrics": results,
        "counts": counts,
        "dataset": kind,
        "fold": args.fold,
        "image_size": args.image_size,
        "gg_real_images": f"centre crop {args.image_size}" if args.gg_real_crop else "whole",
        "recon_vae": args.recon_vae,
        "reconstructions": recon_folder,
        "seed": args.seed,
        "device": str(device),
        "versions": package_versions(),
        "args": vars(args),
    }
    atomic_write_text(out_path, json.dumps(report, indent=2) + "\n")
    logger.info(f"wrote {out_path}")
    tracker = Tracker(
        args.wandb, "GeCA-Eval", {**vars(args), "exp_string_name": os.path.basename(os.path.normpath(args.gen))}, logger
    )
    logged = {}
    if results["GG"]["available"]:
        logged["GG"] = results["GG"]["value"]
    if results["KID"]["available"]:
        logged.update({"KID mean": results["KID"]["mean"], "KID std": results["KID"]["std"]})
    if results["LPIPS"]["available"]:
        logged.update({"LPIPS mean": results["LPIPS"]["mean"], "LPIPS std": results["LPIPS"]["std"]})
    tracker.log(logged, step=0)
    tracker.finish()
    return report


def build_parser() -> argparse.ArgumentParser:
    """The reference's flags (docs/REFERENCE.md §3.5) and this project's additions, in three groups."""
    parser = argparse.ArgumentParser(description="KID, LPIPS diversity and FLD generalization gap of a sample folder.")
    add_input_flags(parser)
    add_metric_flags(parser)
    add_run_flags(parser)
    return parser


def add_input_flags(parser: argparse.ArgumentParser) -> None:
    """The image sets: real and generated folders, the crop size and the fold."""
    parser.add_argument("--real", type=str, required=True, help="real dataset root (holds val_{fold}.csv)")
    parser.add_argument(
        "--gen",
        type=str,
        default=None,
        help="sample folder (holds val_syn_{fold}.csv); required but with --reference-only",
    )
    parser.add_argument(
        "--reference-only",
        action="store_true",
        help="only compute and cache the features of the real images (and of --recon-vae's reconstructions) in "
        "--cache-dir, for the evaluations that follow",
    )
    parser.add_argument(
        "--device_list",
        type=str,
        nargs="+",
        default=["cuda:0"],
        help="devices; the first is used (falls back to cpu without CUDA)",
    )
    add_image_size_flag(parser)
    add_fold_flag(parser)


def add_metric_flags(parser: argparse.ArgumentParser) -> None:
    """The metrics: GG's extractor and real images, seeds, weight files, and the VAE reconstructions to compare
    with."""
    parser.add_argument(
        "--gg_extractor",
        type=str,
        choices=list(GG_EXTRACTORS),
        default="dino",
        help="features of the generalization gap (clip is unavailable offline)",
    )
    parser.add_argument(
        "--gg-real-crop",
        action="store_true",
        help="centre-crop the real GG images to --image-size as for KID (the reference gives the extractor the whole "
        "image, which it resizes to 224 x 224)",
    )
    parser.add_argument(
        "--ft", nargs="?", const=True, default=False, help="accepted for compatibility with the reference; no effect"
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of KID subsets, LPIPS pairing and the FLD fit"
    )
    add_inception_weights_flag(parser)
    parser.add_argument(
        "--dino-weights",
        type=str,
        default=None,
        help="DINOv2 ViT-B/14 weights: timm file or Meta's dinov2_vitb14_pretrain.pth (default: HF/torch cache)",
    )
    parser.add_argument(
        "--alexnet-weights",
        type=str,
        default=None,
        help="torchvision AlexNet weights for LPIPS (default: $TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth)",
    )
    parser.add_argument(
        "--recon-vae",
        type=str,
        default=None,
        help="also compare with this VAE's reconstructions of the real images (ema | mse | an AutoencoderKL folder: "
        "the VAE the samples were decoded by): KID and GG against the reconstructions, and of the reconstructions "
        "against the real images (the floor every latent model of that VAE shares; docs/DECISIONS.md §C9)",
    )
    parser.add_argument(
        "--recon-dir",
        type=str,
        default=None,
        help="where --recon-vae's reconstructions are written and reused: {recon-dir}/real_val/ (with "
        "val_syn_{fold}.csv, which classify.py's gan-test:NAME=DIR scores) and real_train/ (default: a folder "
        "'reconstructions' beside --gen)",
    )


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """How the run goes: batches, workers, outputs, the feature cache, the dataset kind, wandb and TF32."""
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    add_num_workers_flag(parser)
    parser.add_argument(
        "--out",
        type=str,
        default=None,
        help="metrics JSON (default: {gen}/metrics_{fold}.json); with --reference-only, a summary of the cached sets",
    )
    parser.add_argument("--cache-dir", type=str, default=None, help="feature cache (default: {gen}/.feature_cache)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write cached features")
    add_dataset_arguments(parser, label_columns=False)
    parser.add_argument("--wandb", action="store_true", help="log to wandb (project GeCA-Eval)")
    add_tf32_flag(parser)


if __name__ == "__main__":
    run_main("evaluate.py", lambda: main(build_parser().parse_args()))
