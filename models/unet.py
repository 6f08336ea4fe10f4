"""LDM-B: the UNet latent-diffusion baseline of the paper's tables, reconstructed on `diffusers.UNet2DModel`
(docs/DECISIONS.md §C3).

The paper gives only its size ("LDM-B, 17.3 M"); the reference repository has no code for it. The multi-hot label
vector (after per-entry dropout in training, as for GeCA and DiT) is projected by one Linear layer into the time
embedding and added to it through UNet2DModel's identity class embedding; the all-zero vector is the null label.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from torch import nn

from infra import rng
from models.conditioning import GuidedDenoiser, drop_label_entries


class LDM(GuidedDenoiser, nn.Module):
    """Label-conditioned UNet predicting epsilon and the variance interpolation (2C channels).

    Args:
        input_size: latent side L.
        num_classes: number of labels K.
        in_channels: latent channels C.
        block_out_channels: channels of each resolution level.
        down_block_types: diffusers down-block names, one per level.
        up_block_types: diffusers up-block names, one per level.
        layers_per_block: ResNet layers per down block (up blocks have one more).
        attention_head_dim: channels per attention head.
        class_dropout_prob: per-entry label dropout in training.
    """

    is_cellular = False

    def __init__(
        self,
        input_size: int = 32,
        num_classes: int = 11,
        in_channels: int = 4,
        block_out_channels: tuple[int, ...] = (64, 128, 256, 256),
        down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block: int = 1,
        attention_head_dim: int = 32,
        class_dropout_prob: float = 0.1,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels
        self.class_dropout_prob = class_dropout_prob
        # Every down block but the last halves the grid; the up path must meet the skip connections exactly.
        self.input_multiple = 2 ** (len(down_block_types) - 1)
        self.unet = UNet2DModel(
            sample_size=input_size,
            in_channels=in_channels,
            out_channels=self.out_channels,
            block_out_channels=tuple(block_out_channels),
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            layers_per_block=layers_per_block,
            attention_head_dim=attention_head_dim,
            class_embed_type="identity",
        )
        # UNet2DModel's time-embedding width is 4 x the first level's channels.
        self.y_embedder = nn.Linear(num_classes, 4 * block_out_channels[0])

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        extras: torch.Tensor | None = None,
        multi_scale: bool = False,
        generator: rng.Generator = None,
    ) -> torch.Tensor:
        """Predict epsilon and the variance interpolation.

        Args:
            x: (N, C, H, W) noisy latent.
            t: (N,) original timesteps 0..999.
            y: (N, K) float multi-hot labels.
            extras: accepted and ignored (cellular models only).
            multi_scale: accepted and ignored.
            generator: random stream(s) for the label dropout in training, see `infra.rng`.

        Returns:
            (N, 2C, H, W).
        """
        if self.training and self.class_dropout_prob > 0:
            y = drop_label_entries(y, self.class_dropout_prob, generator)
        label_emb = self.y_embedder(y.to(self.y_embedder.weight.dtype))  # (N, 4*C0)
        return self.unet(x, t, class_labels=label_emb).sample  # (N, 2C, H, W)


def LDM_B(**kwargs) -> LDM:
    """LDM-B (docs/DECISIONS.md §C3): levels (64, 128, 256, 256), one layer per block, attention at the lowest level,
    head dim 32."""
    return LDM(block_out_channels=(64, 128, 256, 256), layers_per_block=1, attention_head_dim=32, **kwargs)


def LDM_T(**kwargs) -> LDM:
    """Tiny CPU test model, NOT a paper configuration: levels (32, 64) with attention at the lower one."""
    return LDM(
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=32,
        **kwargs,
    )
