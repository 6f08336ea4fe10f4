"""Training conditions of the study (the rows of Table B, docs/PAPER.md §B2) and their command-line syntax.

- `noaug`: real images, no augmentation.
- `geometric`: real images, geometric augmentation (the baseline).
- `synthetic:DIR` or `synthetic:NAME=DIR`: real images plus the synthetic images listed in `DIR/train_syn_{fold}.csv`,
  all with geometric augmentation.
- `synthetic-only:DIR` or `synthetic-only:NAME=DIR`: the synthetic images of `DIR/train_syn_{fold}.csv` alone, with
  geometric augmentation; model selection still on the real validation split, evaluation on the real test split.
  This is GAN-train, the Classification Accuracy Score of Ravuri and Vinyals (NeurIPS 2019): how much of the real
  label structure a class-conditional generator's images teach (docs/DECISIONS.md §C7). Its row is named
  "NAME (synthetic only)"; NAME is the synthetic set's name, shared with a `synthetic:NAME=DIR` entry of the same DIR.
- `gan-test:DIR` or `gan-test:NAME=DIR`: trains nothing; the baseline classifiers score the images of
  `DIR/val_syn_{fold}.csv` against its labels (GAN-test, as for every synthetic set). For a validation copy without
  an augmentation set, or `evaluate.py --recon-vae`'s VAE reconstructions of the real validation images.

The sampling script writes one folder per fold (its name contains the fold, docs/REFERENCE.md §3.3), so DIR may hold a
`{fold}` placeholder, filled in for each fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infra.errors import UserError

BASELINE = "geometric"
SYNTHETIC_KINDS: tuple[str, ...] = ("synthetic", "synthetic-only")
# A set that is only scored (GAN-test), never trained on.
SCORE_ONLY = "gan-test"
KINDS: tuple[str, ...] = ("noaug", "geometric", *SYNTHETIC_KINDS, SCORE_ONLY)
# Row names of the paper's Table B for the two real-only conditions.
DISPLAY_NAMES = {"geometric": "Baseline (Geometric Aug)", "noaug": "Baseline w/o Aug."}
SYNTHETIC_ONLY_SUFFIX = " (synthetic only)"
SYNTAX = (
    "noaug | geometric | synthetic:DIR | synthetic:NAME=DIR | synthetic-only:DIR | synthetic-only:NAME=DIR | "
    "gan-test:DIR | gan-test:NAME=DIR"
)


def fold_folder(sample_dir: str, fold: int) -> Path:
    """The sample folder of `fold`: `sample_dir` with its `{fold}` placeholder (if any) filled in."""
    return Path(sample_dir.replace("{fold}", str(fold)))


@dataclass(frozen=True)
class Condition:
    """One training condition.

    Attributes:
        name: unique key of the condition in results ("geometric", "noaug", the synthetic NAME, or
            "NAME (synthetic only)").
        kind: "noaug", "geometric", "synthetic" or "synthetic-only".
        sample_dir: the sample folder holding `train_syn_{fold}.csv` (synthetic kinds only); may contain `{fold}`.
        set_name: the synthetic set's NAME (synthetic kinds only): conditions and label-fidelity scores of one
            synthetic set share it.
    """

    name: str
    kind: str
    sample_dir: str | None = None
    set_name: str | None = None

    def folder(self, fold: int) -> Path:
        """The sample folder of `fold` (the `{fold}` placeholder filled in)."""
        if self.sample_dir is None:
            raise UserError(f"condition {self.name!r} has no sample folder")
        return fold_folder(self.sample_dir, fold)

    @property
    def augment(self) -> bool:
        """Geometric augmentation is on for every condition but `noaug`."""
        return self.kind != "noaug"

    @property
    def uses_real(self) -> bool:
        """Whether the real training split is trained on (every condition but `synthetic-only`)."""
        return self.kind != "synthetic-only"

    @property
    def trains(self) -> bool:
        """Whether the condition trains classifiers (every kind but `gan-test`, which only scores a copy)."""
        return self.kind != SCORE_ONLY

    @property
    def uses_synthetic(self) -> bool:
        """Whether a synthetic set is trained on."""
        return self.kind in SYNTHETIC_KINDS

    @property
    def display_name(self) -> str:
        return DISPLAY_NAMES.get(self.kind, self.name)

    def spec(self) -> str:
        """The command-line form (round-trips through parse_condition)."""
        return self.kind if self.sample_dir is None else f"{self.kind}:{self.set_name}={self.sample_dir}"


def parse_condition(text: str) -> Condition:
    """Parse one `--conditions` entry.

    `synthetic:NAME=DIR` names the row NAME; `synthetic:DIR` names it after DIR's last component. A `=` counts as
    the NAME separator only when the part before it contains no path separator. `synthetic-only:` takes the same
    forms; its row is "NAME (synthetic only)".

    Args:
        text: the entry.

    Returns:
        The condition.
    """
    if text in ("noaug", "geometric"):
        return Condition(text, text)
    kind, sep, rest = text.partition(":")
    if kind not in (*SYNTHETIC_KINDS, SCORE_ONLY) or not sep or not rest:
        raise UserError(f"--conditions {text!r}: unknown condition; expected {SYNTAX}")
    name, eq, folder = rest.partition("=")
    if not eq or "/" in name or "\\" in name:
        name, folder = "", rest
    if not folder:
        raise UserError(f"--conditions {text!r}: empty sample folder; expected {SYNTAX}")
    name = name or Path(folder).resolve().name
    if not name or name in KINDS:
        raise UserError(f"--conditions {text!r}: give the synthetic condition a name other than {KINDS}: NAME=DIR")
    if name.endswith(SYNTHETIC_ONLY_SUFFIX):
        raise UserError(f"--conditions {text!r}: NAME must not end with {SYNTHETIC_ONLY_SUFFIX!r}")
    row = name + SYNTHETIC_ONLY_SUFFIX if kind == "synthetic-only" else name
    return Condition(row, kind, folder, name)


def parse_conditions(texts: list[str]) -> list[Condition]:
    """Parse every `--conditions` entry; reject duplicate rows and one synthetic NAME given two folders."""
    conditions = [parse_condition(t) for t in texts]
    names = [c.name for c in conditions]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"--conditions: duplicate condition names {duplicates}; use synthetic:NAME=DIR")
    folders: dict[str, str] = {}
    for c in conditions:
        if c.set_name is not None and folders.setdefault(c.set_name, c.sample_dir) != c.sample_dir:
            raise UserError(
                f"--conditions: synthetic set {c.set_name!r} names two folders ({folders[c.set_name]} and "
                f"{c.sample_dir}); one NAME is one synthetic set"
            )
    return conditions


def synthetic_sets(conditions: list[Condition]) -> dict[str, str]:
    """{set NAME: sample folder (may contain `{fold}`)} of every synthetic set, in order of first appearance."""
    sets: dict[str, str] = {}
    for c in conditions:
        if c.set_name is not None:
            sets.setdefault(c.set_name, c.sample_dir)
    return sets


def table_order(conditions: list[Condition]) -> list[Condition]:
    """Rows in the paper's order: geometric baseline, no augmentation, real + synthetic, then synthetic only."""
    rank = {"geometric": 0, "noaug": 1, "synthetic": 2, "synthetic-only": 3}
    return sorted(conditions, key=lambda c: rank[c.kind])
