"""Conditioning layers shared by GeCA, DiT and LDM: timestep and multi-hot label embedders, adaLN, final layer, CFG."""

from __future__ import annotations

import math

import torch
from torch import nn

from infra import rng


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep features, cosines first (docs/REFERENCE.md §4.4; as DiT).

    Args:
        t: (N,) timesteps (the original, un-respaced integers 0..999), any numeric dtype.
        dim: feature dimension F (even).
        max_period: lowest frequency is 1 / max_period.

    Returns:
        (N, F) float32 features [cos(t f_0), ..., cos(t f_{F/2-1}), sin(t f_0), ..., sin(t f_{F/2-1})].
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]  # (N, F/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, F)


def drop_label_entries(y: torch.Tensor, prob: float, generator: rng.Generator = None) -> torch.Tensor:
    """Zero each entry of a multi-hot label matrix independently with probability `prob`.

    Per entry, not per vector (docs/REFERENCE.md §4.4, kept on purpose per docs/DECISIONS.md §C2.9): a sample with k
    positive labels becomes the all-zero null label only with probability prob^k.

    Args:
        y: (N, K) float multi-hot labels.
        prob: dropout probability of each entry.
        generator: random stream(s), see `infra.rng`.

    Returns:
        (N, K) labels with the dropped entries set to zero.
    """
    drop = rng.rand(y.shape, generator, y.device, torch.float32) < prob
    return torch.where(drop, torch.zeros_like(y), y)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x * (1 + scale) + shift, the per-sample vectors broadcast over tokens.

    Args:
        x: (N, T, D) tokens.
        shift: (N, D).
        scale: (N, D).

    Returns:
        (N, T, D).
    """
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def guidance_combine(model_out: torch.Tensor, cfg_scale: float, guided_channels: int) -> torch.Tensor:
    """Classifier-free guidance on the first `guided_channels` channels of a [cond; uncond] batch.

    eps = eps_u + s * (eps_c - eps_u) is written to both halves; the remaining (variance) channels of each half are
    returned unguided (docs/REFERENCE.md §4.7 and §7: guidance on the in_channels epsilon channels only).

    Args:
        model_out: (2N, C_out, ...) outputs, first half conditional, second half unconditional.
        cfg_scale: guidance scale s.
        guided_channels: number of leading channels C to guide.

    Returns:
        (2N, C_out, ...) guided outputs.
    """
    eps, rest = model_out[:, :guided_channels], model_out[:, guided_channels:]
    cond_eps, uncond_eps = torch.chunk(eps, 2, dim=0)
    half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)


class GuidedDenoiser:
    """Denoisers whose `forward` returns one tensor and carry no state (DiT, LDM-B).

    A mixin for `nn.Module` subclasses with an `in_channels` attribute: classifier-free guidance, and the trivial
    answers to the diffusion loss's `Denoiser` protocol (no initial state, the output is the prediction). GeCA has
    its own versions (GHG, its seed cell and cell-state layout).
    """

    in_channels: int

    def initial_extras(self, x: torch.Tensor, generator: rng.Generator = None) -> None:
        """No state to start from: `extras` stays unset (the diffusion loss's protocol)."""
        return None

    def training_prediction(self, output: torch.Tensor, channels: int) -> torch.Tensor:
        """The train-mode output, (N, 2C, H, W), is already the prediction; the loss checks `channels` against it."""
        return output

    def forward_with_cfg(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        cfg_scale: float,
        extras: torch.Tensor | None = None,
        generator: rng.Generator = None,
    ) -> torch.Tensor:
        """Classifier-free guidance on the epsilon channels.

        Args:
            x: (2N, C, H, W) doubled batch; only the first half is used.
            t: (2N,) original timesteps.
            y: (2N, K) labels [labels; zeros].
            cfg_scale: guidance scale.
            extras: accepted and ignored.
            generator: accepted for interface symmetry (no randomness in eval).

        Returns:
            (2N, 2C, H, W) guided output.
        """
        half = x[: len(x) // 2]
        combined = torch.cat([half, half], dim=0)  # (2N, C, H, W)
        out = self.forward(combined, t, y, generator=generator)  # (2N, 2C, H, W)
        return guidance_combine(out, cfg_scale, self.in_channels)


def xavier_init_linears(model: nn.Module) -> None:
    """DiT's basic initialisation, shared by GeCA (docs/REFERENCE.md §4.8) and DiT: Xavier-uniform Linear weights, zero
    biases."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features then Linear -> SiLU -> Linear (state-dict names `mlp.0`, `mlp.2`)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed timesteps.

        Args:
            t: (N,) original timesteps.

        Returns:
            (N, D) embeddings.
        """
        t_freq = timestep_embedding(t, self.frequency_embedding_size)  # (N, 256)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))  # (N, D)


class LabelEmbedder(nn.Module):
    """Multi-hot label embedder: Linear(K -> D) then Linear(D -> D), no nonlinearity (docs/REFERENCE.md §4.4).

    In training mode each label entry is dropped with probability `dropout_prob`; in eval mode nothing is dropped and
    the unconditional input is the all-zero vector supplied by the caller.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Sequential(nn.Linear(num_classes, hidden_size), nn.Linear(hidden_size, hidden_size))

    def forward(self, y: torch.Tensor, generator: rng.Generator = None) -> torch.Tensor:
        """Embed labels.

        Args:
            y: (N, K) float multi-hot labels.
            generator: random stream(s) for the label dropout, see `infra.rng`.

        Returns:
            (N, D) embeddings.
        """
        if self.training and self.dropout_prob > 0:
            y = drop_label_entries(y, self.dropout_prob, generator)
        return self.embedding_table(y.to(self.embedding_table[0].weight.dtype))  # (N, D)


class FinalLayer(nn.Module):
    """adaLN final layer: LayerNorm (no affine, eps 1e-6), modulation from SiLU(c), Linear(D -> out_dim)."""

    def __init__(self, hidden_size: int, out_dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Project tokens to outputs.

        Args:
            x: (N, T, D) tokens.
            c: (N, D) conditioning.

        Returns:
            (N, T, out_dim).
        """
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x (N, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (N, T, out_dim)
