"""What outputs were made from: identities of input files, and the settings record a resumable job keeps beside its
outputs (docs/DEVIATIONS.md #18; docs/USAGE.md, extraction and sampling).

The sampling scripts and extract_features.py skip the files an earlier run already wrote, so an interrupted run
continues where it stopped. Without a record, a run with another checkpoint, VAE, seed or label set into the same
folder would keep the earlier run's files beside its own, and every later number would mix the two. So each run
records what determines its files (`write_settings`) and a run that finds files stops unless the record says they were
made with its own settings (`check_settings`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from pathlib import Path

from infra.atomic_io import atomic_write_text
from infra.errors import UserError
from infra.stages import read_json


def file_identity(path: str | Path) -> str:
    """Path, size and modification time of a file: changes whenever the file is replaced or edited."""
    stat = Path(path).stat()
    return f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_identity(value: str) -> str:
    """A `--vae` or `--ckpt` value: a folder by the identities of its files, a file by its identity, anything else
    (a hub name such as "ema") as it is."""
    path = Path(value)
    if path.is_dir():
        return ";".join(file_identity(p) for p in sorted(path.iterdir()) if p.is_file())
    return file_identity(path) if path.is_file() else value


def label_item(label: Sequence) -> str:
    """One label vector as a settings item: its entries as digits ("01000100000" for a multi-hot OCT label)."""
    return "".join(str(int(v)) for v in label)


def check_settings(
    record: Path, settings: dict, items: list[str], existing: Collection[int], what: str, flag: str
) -> None:
    """Stop with a UserError when outputs of an earlier run lie in the folder of `record` and the record does not say
    they were made as this run would make them: another run's files would otherwise be kept as if this run had
    written them.

    Args:
        record: the settings file of the outputs (written by `write_settings`).
        settings: what determines every output (checkpoint, VAE, seed, ...; JSON values).
        items: what determines output i alone (its label, its source image), one string per output.
        existing: the indices of the outputs already there (any order); each must have been made for the same item.
        what: the outputs, for the message ("images in .../gen_samples").
        flag: the flag that chooses the folder, for the message.
    """
    if not existing:
        return
    advice = f"remove them to start over, or give another {flag}"
    recorded = read_json(record)
    if not recorded:
        raise UserError(f"{len(existing)} {what} but no readable {record} saying what made them; {advice}")
    old, new = recorded.get("settings", {}).get, json.loads(json.dumps(settings)).get
    keys = dict.fromkeys([*settings, *recorded.get("settings", {})])
    changed = [f"{key} {old(key)!r} -> {new(key)!r}" for key in keys if old(key) != new(key)]
    if changed:
        raise UserError(f"{len(existing)} {what} were made with other settings ({'; '.join(changed)}); {advice}")
    made_for = recorded.get("items", [])
    for i in sorted(existing):
        if i >= len(items):
            raise UserError(f"{what}: output {i} lies beyond the {len(items)} outputs of this run; {advice}")
        was = made_for[i] if i < len(made_for) else None
        if was != items[i]:
            raise UserError(f"{what}: output {i} was made for {was!r}, this run wants {items[i]!r}; {advice}")


def write_settings(record: Path, settings: dict, items: list[str]) -> None:
    """Record beside the outputs what determines them: `settings` for all, `items[i]` for output i (atomically)."""
    atomic_write_text(record, json.dumps({"settings": settings, "items": items}, indent=1) + "\n")
