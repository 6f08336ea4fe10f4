"""The synthetic-set annotation files of the sampling scripts (docs/REFERENCE.md §3.3, §3.4): CSV and label array."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.preprocessing import LabelEncoder

from infra.atomic_io import atomic_np_save, atomic_write_text


def annotation_frame(
    indices: Sequence[int], labels: np.ndarray, label_names: Sequence[str], subdir: str
) -> pd.DataFrame:
    """Rows `client_id, filename, <labels>, patient_name, multi_class_label` for generated images.

    Args:
        indices: global image indices (file `{subdir}/{index:06d}.png`).
        labels: (N, K) integer multi-hot labels, row i belonging to indices[i].
        label_names: the K label column names.
        subdir: `gen_samples` or `gen_samples_val`.

    Returns:
        The frame with a default integer index (written as the first, unnamed CSV column). `multi_class_label`
        label-encodes the string form of each integer label row, so codes follow the lexicographic order of the
        distinct label combinations, as the reference does.
    """
    labels = np.asarray(labels).astype(np.int64).reshape(len(indices), len(label_names))
    df = pd.DataFrame(
        {"client_id": [f"syn_{i}" for i in indices], "filename": [f"{subdir}/{i:06d}.png" for i in indices]}
    )
    for k, name in enumerate(label_names):
        df[name] = labels[:, k]
    df["patient_name"] = list(indices)
    df["multi_class_label"] = LabelEncoder().fit_transform([str(row) for row in labels])
    return df


def write_annotations(
    folder: Path, csv_name: str, subdir: str, indices: Sequence[int], labels: np.ndarray, label_names: Sequence[str]
) -> Path:
    """Write `{folder}/{csv_name}` and the stacked float label array, both atomically.

    The array goes to `{subdir}_annotations.npz.npy`: the reference passes a `.npz` name to `np.save`, which
    appends `.npy`, and later tools look for that exact name (docs/REFERENCE.md §10.26, kept).

    Returns:
        The CSV path.
    """
    df = annotation_frame(indices, labels, label_names, subdir)
    csv_path = folder / csv_name
    atomic_write_text(csv_path, df.to_csv())
    atomic_np_save(folder / f"{subdir}_annotations.npz.npy", np.asarray(labels, dtype=np.float32))
    return csv_path
