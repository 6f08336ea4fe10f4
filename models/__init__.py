"""Denoisers and their registry.

`DiT_models` (the reference's name) maps every model key to a constructor that fixes only size hyper-parameters:
`DiT_models[key](input_size=L, num_classes=K, in_channels=C, **options)`. Keys: DiT-{S,B,L,XL}/{2,4,8}, GeCA-S,
GeCA-XS, LDM-B, and the tiny CPU test entries GeCA-T, DiT-T/2, LDM-T (not paper configurations). Whether a model is a
cellular automaton (needs a seeded cell grid) is its class attribute `is_cellular`; what the training loss needs to
know about a model's state and output layout, each model answers itself (`initial_extras`, `training_prediction`: the
`Denoiser` protocol of `diffusion.gaussian_diffusion`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from models.dit import (
    DiT_B_2,
    DiT_B_4,
    DiT_B_8,
    DiT_L_2,
    DiT_L_4,
    DiT_L_8,
    DiT_S_2,
    DiT_S_4,
    DiT_S_8,
    DiT_T_2,
    DiT_XL_2,
    DiT_XL_4,
    DiT_XL_8,
)
from models.geca import GeCA_S, GeCA_T, GeCA_XS
from models.unet import LDM_B, LDM_T

DiT_models: dict[str, Callable[..., nn.Module]] = {
    "DiT-XL/2": DiT_XL_2,
    "DiT-XL/4": DiT_XL_4,
    "DiT-XL/8": DiT_XL_8,
    "DiT-L/2": DiT_L_2,
    "DiT-L/4": DiT_L_4,
    "DiT-L/8": DiT_L_8,
    "DiT-B/2": DiT_B_2,
    "DiT-B/4": DiT_B_4,
    "DiT-B/8": DiT_B_8,
    "DiT-S/2": DiT_S_2,
    "DiT-S/4": DiT_S_4,
    "DiT-S/8": DiT_S_8,
    "GeCA-S": GeCA_S,
    "GeCA-XS": GeCA_XS,
    "LDM-B": LDM_B,
    "GeCA-T": GeCA_T,
    "DiT-T/2": DiT_T_2,
    "LDM-T": LDM_T,
}
