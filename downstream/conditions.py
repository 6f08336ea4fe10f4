"""Training conditions of the study (the rows of Table B, SPEC B2) and their command-line syntax.

`noaug` (real images, no augmentation), `geometric` (real images, geometric augmentation: the baseline) and
`synthetic:DIR` or `synthetic:NAME=DIR` (real images plus the synthetic images listed in `DIR/train_syn_{fold}.csv`,
all with geometric augmentation). The sampling script writes one folder per fold (its name contains the fold,
SPEC 3.3), so DIR may hold a `{fold}` placeholder, filled in for each fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BASELINE = "geometric"
KINDS: tuple[str, ...] = ("noaug", "geometric", "synthetic")
# Row names of the paper's Table B for the two real-only conditions.
DISPLAY_NAMES = {"geometric": "Baseline (Geometric Aug)", "noaug": "Baseline w/o Aug."}
SYNTAX = "noaug | geometric | synthetic:DIR | synthetic:NAME=DIR"


@dataclass(frozen=True)
class Condition:
    """One training condition.

    Attributes:
        name: unique key of the condition in results ("geometric", "noaug", or the synthetic NAME).
        kind: "noaug", "geometric" or "synthetic".
        sample_dir: the sample folder holding `train_syn_{fold}.csv` (synthetic only); may contain `{fold}`.
    """

    name: str
    kind: str
    sample_dir: str | None = None

    def folder(self, fold: int) -> Path:
        """The sample folder of `fold` (the `{fold}` placeholder filled in)."""
        if self.sample_dir is None:
            raise ValueError(f"condition {self.name!r} has no sample folder")
        return Path(self.sample_dir.replace("{fold}", str(fold)))

    @property
    def augment(self) -> bool:
        """Geometric augmentation is on for every condition but `noaug`."""
        return self.kind != "noaug"

    @property
    def display_name(self) -> str:
        return DISPLAY_NAMES.get(self.kind, self.name)

    def spec(self) -> str:
        """The command-line form (round-trips through parse_condition)."""
        return self.kind if self.sample_dir is None else f"synthetic:{self.name}={self.sample_dir}"


def parse_condition(text: str) -> Condition:
    """Parse one `--conditions` entry.

    `synthetic:NAME=DIR` names the row NAME; `synthetic:DIR` names it after DIR's last component. A `=` counts as
    the NAME separator only when the part before it contains no path separator.

    Args:
        text: the entry.

    Returns:
        The condition.
    """
    if text in ("noaug", "geometric"):
        return Condition(text, text)
    kind, sep, rest = text.partition(":")
    if kind != "synthetic" or not sep or not rest:
        raise ValueError(f"--conditions {text!r}: unknown condition; expected {SYNTAX}")
    name, eq, folder = rest.partition("=")
    if not eq or "/" in name or "\\" in name:
        name, folder = "", rest
    if not folder:
        raise ValueError(f"--conditions {text!r}: empty sample folder; expected {SYNTAX}")
    name = name or Path(folder).resolve().name
    if not name or name in KINDS:
        raise ValueError(f"--conditions {text!r}: give the synthetic condition a name other than {KINDS}: NAME=DIR")
    return Condition(name, "synthetic", folder)


def parse_conditions(texts: list[str]) -> list[Condition]:
    """Parse every `--conditions` entry and reject duplicate names."""
    conditions = [parse_condition(t) for t in texts]
    names = [c.name for c in conditions]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"--conditions: duplicate condition names {duplicates}; use synthetic:NAME=DIR")
    return conditions


def table_order(conditions: list[Condition]) -> list[Condition]:
    """Rows in the paper's order: geometric baseline, no augmentation, then synthetic conditions as given."""
    rank = {"geometric": 0, "noaug": 1, "synthetic": 2}
    return sorted(conditions, key=lambda c: rank[c.kind])
