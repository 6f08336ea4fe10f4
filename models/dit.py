"""DiT baseline with the multi-hot label embedder of GeCA (docs/REFERENCE.md §7).

Standard DiT (adaLN-Zero blocks, timm patch embedding, attention and MLP, fixed 2-D sin-cos position table stored as
a frozen parameter, learned sigma), except: labels are multi-hot vectors embedded by two Linear layers with per-entry
dropout, the patch-embedding convolution keeps PyTorch's default initialisation, and guidance acts on the first
`in_channels` channels. The reference checkpointed every block in every forward; here that is the option
`grad_checkpoint` (training only).
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Attention, Mlp, PatchEmbed
from torch import nn
from torch.utils.checkpoint import checkpoint

from infra import rng
from models.conditioning import (
    FinalLayer,
    GuidedDenoiser,
    LabelEmbedder,
    TimestepEmbedder,
    modulate,
    xavier_init_linears,
)


def sincos_table_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """MAE/DiT 1-D sin-cos features: [sin(p w_i) ..., cos(p w_i) ...], w_i = 10000^(-2i/dim), i < dim/2.

    Args:
        dim: feature dimension F (even).
        pos: (M,) positions.

    Returns:
        (M, F) float64 table.
    """
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.to(torch.float64)[:, None] * omega[None]  # (M, F/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_table_2d(dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position table of DiT (MAE convention), tokens in raster order.

    As in MAE/DiT, the first half of the features encodes the column index and the second half the row index.

    Args:
        dim: width D (divisible by 4).
        grid_size: tokens per side G.

    Returns:
        (G*G, D) float64 table.
    """
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # token n = row * G + col
    return torch.cat([sincos_table_1d(dim // 2, cols.flatten()), sincos_table_1d(dim // 2, rows.flatten())], dim=1)


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block: timm attention (qkv bias) and tanh-GELU MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: (N, T, D) tokens.
            c: (N, D) conditioning.

        Returns:
            (N, T, D).
        """
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class DiT(GuidedDenoiser, nn.Module):
    """Diffusion transformer predicting epsilon and the variance interpolation (2C channels).

    Args:
        input_size: latent side L (square latents).
        num_classes: number of labels K.
        in_channels: latent channels C.
        patch_size: patch side p.
        hidden_size: width D.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        class_dropout_prob: per-entry label dropout in training.
        grad_checkpoint: activation-checkpoint every block in training (off by default).
    """

    is_cellular = False

    def __init__(
        self,
        input_size: int = 32,
        num_classes: int = 11,
        in_channels: int = 4,
        patch_size: int = 2,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels
        self.patch_size = patch_size
        self.input_multiple = patch_size  # the input side must be a whole number of patches
        self.grad_checkpoint = grad_checkpoint

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = self.x_embedder.num_patches
        # Fixed table, stored as a frozen parameter so reference checkpoints (which contain it) load strictly.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size * patch_size * self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT initialisation, keeping PyTorch's default for the patch-embedding convolution (docs/REFERENCE.md §7)."""

        xavier_init_linears(self)
        grid_size = int(self.x_embedder.num_patches**0.5)
        table = sincos_table_2d(self.pos_embed.shape[-1], grid_size)
        self.pos_embed.data.copy_(table.float().unsqueeze(0))
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens to image, patch order (h, w, p, p, c) as DiT.

        Args:
            x: (N, T, p*p*C_out) tokens.

        Returns:
            (N, C_out, H, W).
        """
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)  # (N, h, w, p, p, C_out)
        x = torch.einsum("nhwpqc->nchpwq", x)  # (N, C_out, h, p, w, p)
        return x.reshape(x.shape[0], c, h * p, w * p)  # (N, C_out, H, W)

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
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(y, generator)  # (N, D)
        use_checkpoint = self.grad_checkpoint and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, c, use_reentrant=False) if use_checkpoint else block(x, c)  # (N, T, D)
        x = self.final_layer(x, c)  # (N, T, p*p*2C)
        return self.unpatchify(x)  # (N, 2C, H, W)


def DiT_XL_2(**kwargs) -> DiT:
    """DiT-XL/2: depth 28, width 1152, 16 heads, patch 2."""
    return DiT(depth=28, hidden_size=1152, num_heads=16, patch_size=2, **kwargs)


def DiT_XL_4(**kwargs) -> DiT:
    """DiT-XL/4: depth 28, width 1152, 16 heads, patch 4."""
    return DiT(depth=28, hidden_size=1152, num_heads=16, patch_size=4, **kwargs)


def DiT_XL_8(**kwargs) -> DiT:
    """DiT-XL/8: depth 28, width 1152, 16 heads, patch 8."""
    return DiT(depth=28, hidden_size=1152, num_heads=16, patch_size=8, **kwargs)


def DiT_L_2(**kwargs) -> DiT:
    """DiT-L/2: depth 24, width 1024, 16 heads, patch 2."""
    return DiT(depth=24, hidden_size=1024, num_heads=16, patch_size=2, **kwargs)


def DiT_L_4(**kwargs) -> DiT:
    """DiT-L/4: depth 24, width 1024, 16 heads, patch 4."""
    return DiT(depth=24, hidden_size=1024, num_heads=16, patch_size=4, **kwargs)


def DiT_L_8(**kwargs) -> DiT:
    """DiT-L/8: depth 24, width 1024, 16 heads, patch 8."""
    return DiT(depth=24, hidden_size=1024, num_heads=16, patch_size=8, **kwargs)


def DiT_B_2(**kwargs) -> DiT:
    """DiT-B/2: depth 12, width 768, 12 heads, patch 2."""
    return DiT(depth=12, hidden_size=768, num_heads=12, patch_size=2, **kwargs)


def DiT_B_4(**kwargs) -> DiT:
    """DiT-B/4: depth 12, width 768, 12 heads, patch 4."""
    return DiT(depth=12, hidden_size=768, num_heads=12, patch_size=4, **kwargs)


def DiT_B_8(**kwargs) -> DiT:
    """DiT-B/8: depth 12, width 768, 12 heads, patch 8."""
    return DiT(depth=12, hidden_size=768, num_heads=12, patch_size=8, **kwargs)


def DiT_S_2(**kwargs) -> DiT:
    """DiT-S/2: depth 12, width 384, 6 heads, patch 2."""
    return DiT(depth=12, hidden_size=384, num_heads=6, patch_size=2, **kwargs)


def DiT_S_4(**kwargs) -> DiT:
    """DiT-S/4: depth 12, width 384, 6 heads, patch 4."""
    return DiT(depth=12, hidden_size=384, num_heads=6, patch_size=4, **kwargs)


def DiT_S_8(**kwargs) -> DiT:
    """DiT-S/8: depth 12, width 384, 6 heads, patch 8."""
    return DiT(depth=12, hidden_size=384, num_heads=6, patch_size=8, **kwargs)


def DiT_T_2(**kwargs) -> DiT:
    """Tiny CPU test model, NOT a paper configuration: depth 2, width 64, 2 heads, patch 2."""
    return DiT(depth=2, hidden_size=64, num_heads=2, patch_size=2, **kwargs)
