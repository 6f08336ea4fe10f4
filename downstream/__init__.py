"""Downstream OCT multi-label classification study (SPEC B1, C6): metrics, significance, augmentation, runs, report."""
