"""Feature extraction over image files: image sets, batched extraction with progress bars, an on-disk cache.

Also the shared vocabulary for pretrained weights that are not on this machine: `MetricUnavailable` and
`WeightsNotFoundError` say which file is missing, where it goes and which flag points at it (docs/DECISIONS.md §C4).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.images import to_rgb
from data.transforms import center_crop_arr
from infra.atomic_io import atomic_write
from infra.provenance import file_identity

CACHE_VERSION = 1


class MetricUnavailable(RuntimeError):
    """A metric cannot run on this machine; the message says why and what would make it run."""


class WeightsNotFoundError(MetricUnavailable):
    """Pretrained weights are missing; nothing is downloaded and no random weights are used instead.

    Args:
        what: the weights, in words.
        expected: file(s) looked for.
        flag: the command-line flag that points at a file.
        hint: an extra sentence (another source of the weights).
    """

    def __init__(self, what: str, expected: Sequence[str], flag: str, hint: str = ""):
        self.expected = list(expected)
        self.flag = flag
        where = " or ".join(self.expected)
        message = f"{what} not found (looked for {where}); place the file there or pass {flag} FILE"
        super().__init__(message + (f", {hint}" if hint else ""))


def torch_hub_checkpoint(name: str) -> Path:
    """`$TORCH_HOME/hub/checkpoints/{name}`, where torchvision and torch-fidelity keep downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / name


# ---------------------------------------------------------------------------------------------------------------
# Image sets


class ImageFiles:
    """Loads image i of a list of files as RGB, optionally with the ADM centre crop (picklable for workers).

    KID's real images get the crop to `image_size`, as training sees them (docs/REFERENCE.md §9.1); GG's real images
    and every generated PNG are loaded whole (image_size None), the GG extractor resizing them (§9.3).

    Args:
        paths: the image files.
        image_size: side of the centre crop (`center_crop_arr`), or None to keep the image as it is.
    """

    def __init__(self, paths: Sequence[str | Path], image_size: int | None = None):
        self.paths = [str(p) for p in paths]
        self.image_size = image_size

    def __call__(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as img:
            rgb = to_rgb(img)  # 16-bit greyscale scaled to 8 bits, not clipped (data/images.py)
        return rgb if self.image_size is None else center_crop_arr(rgb, self.image_size)


@dataclass
class ImageSet:
    """An ordered set of images with a stable identity for caching.

    Attributes:
        name: what the set is ("generated", "real_val", ...), for logs and cache file names.
        keys: one identifier per image (a file path, or an array entry such as `retinamnist_224.npz:test[3]`).
        load: index -> RGB PIL image, preprocessing included; picklable for DataLoader workers.
        identity: identity of the underlying files (sizes, modification times) and of the preprocessing.
    """

    name: str
    keys: list[str]
    load: Callable[[int], Image.Image]
    identity: str

    def __len__(self) -> int:
        return len(self.keys)


def file_image_set(name: str, paths: Sequence[str | Path], image_size: int | None = None) -> ImageSet:
    """An `ImageSet` over image files, centre-cropped to `image_size` unless it is None.

    Raises:
        FileNotFoundError: naming the first missing file.
    """
    keys = [str(p) for p in paths]
    missing = [k for k in keys if not Path(k).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) of the {name} set are missing, e.g. {missing[0]}")
    digest = hashlib.sha256()
    for key in keys:
        digest.update(file_identity(key).encode())
    identity = f"crop={image_size}:{digest.hexdigest()}"
    return ImageSet(name=name, keys=keys, load=ImageFiles(keys, image_size), identity=identity)


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) uint8 tensor (the KID input, docs/REFERENCE.md §9.1)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class _TransformedImages(Dataset):
    def __init__(self, images: ImageSet, transform: Callable[[Image.Image], torch.Tensor]):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.images.load(index))


def _as_list(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    return batch


@torch.no_grad()
def extract_features(
    images: ImageSet,
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    transform: Callable[[Image.Image], torch.Tensor],
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    num_workers: int = 0,
    desc: str | None = None,
) -> torch.Tensor:
    """Run `model` over an image set in batches, with a progress bar.

    Images of different sizes in one batch (possible for generated PNGs loaded as is) go through one at a time.

    Args:
        images: the image set.
        model: batch (N, 3, H, W) on `device` -> (N, D) features.
        transform: PIL image -> (3, H, W) tensor (the extractor's preprocessing).
        device: where the model runs.
        batch_size: images per forward pass.
        num_workers: DataLoader workers decoding images.
        desc: progress-bar label.

    Returns:
        (N, D) float32 features on the CPU, in the order of `images.keys`.
    """
    loader = DataLoader(
        _TransformedImages(images, transform), batch_size=batch_size, num_workers=num_workers, collate_fn=_as_list
    )
    chunks = []
    for batch in tqdm(loader, desc=desc or images.name, unit="batch", leave=False):
        if all(x.shape == batch[0].shape for x in batch):
            feats = model(torch.stack(batch).to(device))
        else:
            feats = torch.cat([model(x[None].to(device)) for x in batch])
        chunks.append(feats.reshape(len(batch), -1).float().cpu())
    return torch.cat(chunks)


# ---------------------------------------------------------------------------------------------------------------
# Cache


def cache_path(cache_dir: str | Path, images: ImageSet, extractor: str) -> Path:
    """Cache file of one (image set, extractor) pair: the name says what, the hash says which exact inputs."""
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, extractor, images.identity, images.keys]).encode()).hexdigest()[
        :20
    ]
    return Path(cache_dir) / f"{images.name}-{extractor.split(':')[0]}-{digest}.npz"


def cached_features(
    images: ImageSet, extractor: str, compute: Callable[[], torch.Tensor], cache_dir: str | Path | None
) -> torch.Tensor:
    """Features of an image set from the cache, or computed by `compute()` and stored.

    The key covers the extractor (name and weights file identity), the ordered file list, every file's size and
    modification time, and the preprocessing, so any change recomputes.

    Args:
        images: the image set.
        extractor: extractor name plus the identity of its weights, e.g. "inception:<file identity>".
        compute: () -> (N, D) features, called on a miss.
        cache_dir: cache folder; None disables caching.

    Returns:
        (N, D) float32 CPU features.
    """
    if cache_dir is None:
        return compute()
    path = cache_path(cache_dir, images, extractor)
    if path.is_file():
        with np.load(path) as cached:
            if int(cached["count"]) == len(images):
                return torch.from_numpy(cached["features"])
    feats = compute()

    def write(f: io.BufferedWriter) -> None:
        np.savez(f, features=feats.numpy(), count=np.array(len(images)))

    atomic_write(path, write)
    return feats
