"""The pieces of `train.py`, one job per module, as `synthesis/` serves the sampling scripts.

`flags` checks the flags, `data` builds the training set, its epoch order and the validation batch, `resume` opens a
checkpoint to continue from, `experiment` keeps the experiment folder's records, `state` writes checkpoints,
`validation` samples and measures KID, and `loop` runs the optimiser steps. `train.main` reads as the recipe.
"""
