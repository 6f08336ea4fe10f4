"""Downstream OCT multi-label classification study (docs/PAPER.md §B1, docs/DECISIONS.md §C6): metrics, significance,
augmentation, runs, report."""
