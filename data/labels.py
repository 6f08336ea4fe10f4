"""Label-name constants of the datasets (docs/REFERENCE.md §2.1, §2.2)."""

from __future__ import annotations

# The 11 OCT labels in the reference's column order (docs/REFERENCE.md §2.1).
OCT_LABELS: tuple[str, ...] = ("NOR", "AMD", "WAMD", "DR", "CSC", "PED", "MEM", "FLD", "EXU", "CNV", "RVO")
# RetinaMNIST diabetic-retinopathy grades, one-hot (docs/REFERENCE.md §2.2); the reference names them '0'..'4'.
RETINAMNIST_LABELS: tuple[str, ...] = ("0", "1", "2", "3", "4")
# The reference's leftover TNBC mode (docs/REFERENCE.md §2.1); kept so its CSVs still load.
TNBC_LABELS: tuple[str, ...] = ("er", "pr", "her2", "type_tn")
