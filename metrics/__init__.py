"""Image metrics of the reference's evaluate.py (docs/REFERENCE.md §9): KID, LPIPS diversity, FLD generalization gap.

Statistics (`kid`, `lpips_diversity`, `fld`) are pure functions of features or distances; the feature networks
(`inception`, `dino`, the LPIPS network) are each loaded by one function from local files only; `features` extracts
and caches features of image sets.
"""
