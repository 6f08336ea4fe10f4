"""GeCA: a neural cellular automaton denoiser for latent diffusion (docs/REFERENCE.md §4).

The cell state on an H x W latent grid has C input channels (the noisy latent x_t, never updated), 2C output channels
(epsilon prediction and variance interpolation) and h hidden channels ("genes"). One forward grows the output from
the given state by `steps` applications of one shared update rule: a single adaLN-Zero transformer layer whose
attention is restricted to the 3x3 neighbourhood of each cell, applied asynchronously (each cell updated with
probability `update_rate`). Parameter names equal the reference's, so its checkpoints load with `strict=True`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from infra import rng
from models.cellular import (
    flex_grid_local_attention,
    grid_local_attention,
    seed_cells,
    sinusoidal_table_1d,
    update_masks,
)
from models.conditioning import (
    FinalLayer,
    LabelEmbedder,
    TimestepEmbedder,
    guidance_combine,
    modulate,
    xavier_init_linears,
)


class PreNorm(nn.Module):
    """LayerNorm (affine, eps 1e-5), adaLN modulation, then the wrapped function (names `norm`, `fn`)."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, **kwargs: int) -> torch.Tensor:
        """Apply fn(modulate(LN(x), shift, scale)).

        Args:
            x: (N, T, D) tokens.
            shift: (N, D).
            scale: (N, D).
            **kwargs: passed to `fn` (the grid size for the attention).

        Returns:
            (N, T, D).
        """
        return self.fn(modulate(self.norm(x), shift, scale), **kwargs)


class LocalAttention(nn.Module):
    """Multi-head attention over each cell's 3x3 neighbourhood (qkv without bias, names `to_qkv`, `to_out.0`).

    Args:
        dim: token width D.
        heads: attention heads.
        head_dim: width of each head d.
        backend: "slices" (`grid_local_attention`, any device), "flex" (`flex_grid_local_attention`, fused on CUDA)
            or "auto" (flex on CUDA, slices elsewhere). All three compute the same exact-border attention.
    """

    BACKENDS = ("auto", "slices", "flex")

    def __init__(self, dim: int, heads: int, head_dim: int, backend: str = "slices") -> None:
        super().__init__()
        if backend not in self.BACKENDS:
            raise ValueError(f"attention backend must be one of {self.BACKENDS}, got {backend!r}")
        self.heads = heads
        self.head_dim = head_dim
        self.backend = backend
        self.to_qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * head_dim, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Attend locally.

        Args:
            x: (N, T, D) tokens in raster order, T = height * width.
            height: grid height H.
            width: grid width W.

        Returns:
            (N, T, D).
        """
        n, tokens, _ = x.shape
        # q | k | v, each split as (heads, head_dim) with heads outermost (docs/REFERENCE.md §4.12); raster order = (H,
        # W).
        qkv = self.to_qkv(x).view(n, height, width, 3, self.heads, self.head_dim)  # (N, H, W, 3, h, d)
        use_flex = self.backend == "flex" or (self.backend == "auto" and qkv.is_cuda)
        attend = flex_grid_local_attention if use_flex else grid_local_attention
        out = attend(qkv, self.head_dim**-0.5)  # (N, H, W, h, d)
        return self.to_out(out.reshape(n, tokens, self.heads * self.head_dim))  # (N, T, D)


class FeedForward(nn.Module):
    """Linear -> exact GELU -> Dropout(0) -> Linear -> Dropout(0) (names `net.0`, `net.3`)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden_dim, dim), nn.Dropout(0.0)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, D) -> (N, T, D)."""
        return self.net(x)


class Transformer(nn.Module):
    """adaLN-Zero transformer with one adaLN projection shared by all its layers (docs/REFERENCE.md §4.5.4)."""

    def __init__(
        self, dim: int, depth: int, heads: int, head_dim: int, mlp_dim: int, attention_backend: str = "slices"
    ) -> None:
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.layers = nn.ModuleList(
            [
                nn.ModuleList(
                    [
                        PreNorm(dim, LocalAttention(dim, heads, head_dim, attention_backend)),
                        PreNorm(dim, FeedForward(dim, mlp_dim)),
                    ]
                )
                for _ in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Run the layers.

        Args:
            x: (N, T, D) tokens, T = height * width.
            c: (N, D) conditioning.
            height: grid height H.
            width: grid width W.

        Returns:
            (N, T, D).
        """
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        for attn, ff in self.layers:
            x = x + gate_attn.unsqueeze(1) * attn(x, shift_attn, scale_attn, height=height, width=width)
            x = x + gate_mlp.unsqueeze(1) * ff(x, shift_mlp, scale_mlp)
        return x


class GeCA(nn.Module):
    """Generative cellular automaton denoiser.

    Args:
        input_size: latent side (the grid size used for training; any grid works at run time).
        num_classes: number of labels K of the multi-hot conditioning vector.
        in_channels: latent channels C; the model predicts 2C channels (epsilon and learned variance).
        hidden_size: embedding width D.
        num_heads: attention heads.
        head_dim: width of each head.
        mlp_dim: hidden width of the MLP.
        hidden_channels: hidden ("gene") cell channels h.
        depth: transformer layers per update (1 in the paper).
        steps: cellular steps per forward, sharing one set of weights.
        update_rate: probability that a cell is updated in a step; >= 1 updates every cell (deterministic).
        class_dropout_prob: per-entry label dropout in training.
        nca_checkpoint: activation-checkpoint segments over the steps in training (0 or 1: off).
        attention_backend: local-attention implementation, see `LocalAttention`; not part of the state dict.
            Default "slices" (exact everywhere, forward and backward tested on CPU); "auto" picks the fused
            FlexAttention on CUDA, whose backward has not yet been checked on a GPU (docs/PERFORMANCE.md).
    """

    is_cellular = True
    # Any grid side works: the automaton grows from one cell and attends to 3 x 3 neighbourhoods.
    input_multiple = 1

    def __init__(
        self,
        input_size: int = 32,
        num_classes: int = 11,
        in_channels: int = 4,
        hidden_size: int = 768,
        num_heads: int = 12,
        head_dim: int = 64,
        mlp_dim: int = 3072,
        hidden_channels: int = 64,
        depth: int = 1,
        steps: int = 12,
        update_rate: float = 0.5,
        class_dropout_prob: float = 0.1,
        nca_checkpoint: int = 0,
        attention_backend: str = "slices",
    ) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if update_rate <= 0:
            raise ValueError(f"update_rate must be positive, got {update_rate}")
        self.input_size = input_size
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels
        self.hidden_channels = hidden_channels
        self.steps = steps
        self.update_rate = update_rate
        self.nca_checkpoint = nca_checkpoint
        self.update_channels = self.out_channels + hidden_channels  # output + hidden, the part that is updated

        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.cell_to_embedding = nn.Linear(in_channels + self.update_channels, hidden_size)
        self.transformer = Transformer(hidden_size, depth, num_heads, head_dim, mlp_dim, attention_backend)
        self.final_layer = FinalLayer(hidden_size, self.update_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Initialise as docs/REFERENCE.md §4.8: at init every update is zero, so the prediction equals the seed."""

        xavier_init_linears(self)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for linear in (self.transformer.adaLN_modulation[-1], self.final_layer.adaLN_modulation[-1]):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def seed(
        self, x: torch.Tensor, size: int | tuple[int, int] | None = None, generator: rng.Generator = None
    ) -> torch.Tensor:
        """Output + hidden seed state: zeros, one N(0, 1) centre cell in the output channels (docs/REFERENCE.md §4.3).

        Args:
            x: (N, ...) tensor giving the batch size, device and dtype (the noisy latent).
            size: grid side or (H, W); the last two dims of x when None.
            generator: random stream(s) for the centre cells, see `infra.rng`.

        Returns:
            (N, 2C + h, H, W) seed.
        """
        if size is None:
            height, width = x.shape[-2:]
        elif isinstance(size, int):
            height = width = size
        else:
            height, width = size
        return seed_cells(
            x.shape[0], self.out_channels, self.update_channels, height, width, generator, x.device, x.dtype
        )

    def initial_extras(self, x: torch.Tensor, generator: rng.Generator = None) -> torch.Tensor:
        """The state a denoising call on `x` starts from: a fresh `seed` on x's grid (the diffusion loss's protocol).

        Training starts every forward from it (docs/REFERENCE.md §5.4.1), and so does the first step of GHG
        sampling.

        Args:
            x: (N, C, H, W) noisy latent.
            generator: random stream(s) for the centre cells, see `infra.rng`.

        Returns:
            (N, 2C + h, H, W) seed, hidden channels 0.
        """
        return self.seed(x, generator=generator)

    def training_prediction(self, output: torch.Tensor, channels: int) -> torch.Tensor:
        """The prediction inside the full cell state that `forward` returns in train mode (the loss's protocol).

        Cell state layout (docs/REFERENCE.md §4.2): input [0, C), output [C, 3C) = eps-hat then v, hidden after.

        Args:
            output: (N, C + 2C + h, H, W) train-mode state.
            channels: leading output channels the loss reads (2C with a learned variance, C without).

        Returns:
            (N, channels, H, W), a view of `output`.
        """
        return output[:, self.in_channels : self.in_channels + channels]

    def _steps(
        self,
        cells: torch.Tensor,
        c: torch.Tensor,
        pos: torch.Tensor,
        masks: torch.Tensor | None,
        num_steps: int,
        height: int,
        width: int,
    ) -> torch.Tensor:
        """Apply the update rule `num_steps` times to a token-major cell state.

        Without autograd (sampling) the state is updated in place; with it each step makes a new state, because the
        cell embedding of the step keeps the old one for its backward.

        Args:
            cells: (N, H*W, C + 2C + h) cell state, one row per cell in raster order.
            c: (N, D) conditioning.
            pos: (H*W, D) position table.
            masks: (N, num_steps, H*W, 1) update masks, or None to update every cell in each step.
            num_steps: number of steps S to run.
            height: grid height H.
            width: grid width W.

        Returns:
            (N, H*W, C + 2C + h) state after the steps.
        """
        in_place = not torch.is_grad_enabled()
        for k in range(num_steps):
            x = self.cell_to_embedding(cells) + pos  # (N, H*W, D)
            x = self.transformer(x, c, height, width)  # (N, H*W, D)
            update = self.final_layer(x, c)  # (N, H*W, 2C+h)
            # The input channels (x_t) are carried unchanged; only output + hidden are updated
            # (docs/REFERENCE.md §4.5.7). The masks are 0/1, so multiply-add with them is exact.
            kept, updated = cells[..., : self.in_channels], cells[..., self.in_channels :]
            if in_place:
                if masks is None:
                    updated.add_(update)
                else:
                    updated.addcmul_(update, masks[:, k])
            else:
                updated = updated + update if masks is None else torch.addcmul(updated, update, masks[:, k])
                cells = torch.cat([kept, updated], dim=-1)  # (N, H*W, C+2C+h)
        return cells

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        extras: torch.Tensor | None = None,
        multi_scale: bool = False,
        generator: rng.Generator = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Grow the prediction from `extras` by `steps` cellular updates (docs/REFERENCE.md §4.6).

        Args:
            x: (N, C, H, W) noisy latent x_t.
            t: (N,) original timesteps 0..999.
            y: (N, K) float multi-hot labels (all zeros = null label).
            extras: (N, 2C + h, H, W) output + hidden state to start from; a fresh seed when None. Not modified.
            multi_scale: accepted and ignored (the model works on any grid).
            generator: random stream(s) for the seed (when extras is None), label dropout and update masks.

        Returns:
            Training mode: the full final state (N, C + 2C + h, H, W).
            Eval mode: (out (N, 2C, H, W), cells (N, 2C + h, H, W)); cells are the next call's `extras`.
        """
        if extras is None:
            extras = self.seed(x, generator=generator)  # (N, 2C+h, H, W)
        n, _, height, width = x.shape
        # The steps work on one token-major state, (N, H*W, C+2C+h): the rows the cell embedding reads and the
        # final layer writes, so no per-step layout changes. A fresh tensor, so `extras` is never modified.
        cells = torch.cat(
            [x.flatten(2).transpose(1, 2), extras.to(x.dtype).flatten(2).transpose(1, 2)], dim=2
        )  # (N, H*W, C+2C+h)
        c = self.t_embedder(t) + self.y_embedder(y, generator)  # (N, D)
        # The table takes the weights' dtype, not the autocast dtype of c: the reference adds a float32 table, which
        # under fp16/bf16 autocast promotes the tokens and so the transformer's residual stream to float32.
        pos = sinusoidal_table_1d(height * width, c.shape[1], x.device, self.cell_to_embedding.weight.dtype)  # (H*W, D)
        masks = None
        if self.update_rate < 1:
            masks = update_masks(n, self.steps, height, width, self.update_rate, generator, x.device, x.dtype)
            masks = masks.flatten(2).unsqueeze(-1)  # (N, S, H*W, 1)

        segments = min(self.nca_checkpoint, self.steps)
        if segments > 1 and self.training and torch.is_grad_enabled():
            bounds = [round(i * self.steps / segments) for i in range(segments + 1)]
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                seg_masks = None if masks is None else masks[:, lo:hi]
                # The conditioning goes into every segment (the reference's last segment dropped it,
                # docs/REFERENCE.md §4.9).
                cells = checkpoint(
                    self._steps, cells, c, pos, seg_masks, hi - lo, height, width, use_reentrant=False
                )  # (N, H*W, C+2C+h)
        else:
            cells = self._steps(cells, c, pos, masks, self.steps, height, width)  # (N, H*W, C+2C+h)
        state = cells.transpose(1, 2).reshape(n, -1, height, width).contiguous()  # (N, C+2C+h, H, W)

        if self.training:
            return state
        return state[:, self.in_channels : self.in_channels + self.out_channels], state[:, self.in_channels :]

    def forward_with_cfg(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        cfg_scale: float,
        extras: torch.Tensor | None = None,
        generator: rng.Generator = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Classifier-free guidance with Gene Heredity Guidance (docs/REFERENCE.md §4.7).

        The output channels of `extras` are re-seeded from a fresh single centre cell (sized from the actual grid);
        the hidden channels are inherited from the previous denoising step. `extras` is not modified in place.
        Without `extras` the whole state (output and hidden) is a fresh seed, as in training: the sampler passes
        none under `inherit_state=False`, the fresh-seed ablation of GHG.

        Args:
            x: (2N, C, H, W) doubled batch; only the first half is used, for both branches.
            t: (2N,) original timesteps.
            y: (2N, K) labels [labels; zeros].
            cfg_scale: guidance scale.
            extras: (2N, 2C + h, H, W) previous cells; a fresh seed (hidden channels 0) when None.
            generator: random stream(s), see `infra.rng`.

        Returns:
            (guided out (2N, 2C, H, W), cells (2N, 2C + h, H, W)).
        """
        half = x[: len(x) // 2]
        combined = torch.cat([half, half], dim=0)  # (2N, C, H, W)
        cells = self.seed(combined, generator=generator)  # (2N, 2C+h, H, W)
        if extras is not None:
            # GHG: fresh output channels, hidden genes inherited; a new tensor, the caller's extras stay untouched.
            cells = torch.cat([cells[:, : self.out_channels], extras[:, self.out_channels :].to(cells.dtype)], dim=1)
        out, cells = self.forward(combined, t, y, extras=cells, generator=generator)
        return guidance_combine(out, cfg_scale, self.in_channels), cells


def GeCA_S(**kwargs) -> GeCA:
    """GeCA-S (docs/REFERENCE.md §4.1): width 768, 12 heads x 64, MLP 3072, 64 hidden channels, 12 steps."""
    return GeCA(hidden_size=768, num_heads=12, head_dim=64, mlp_dim=3072, hidden_channels=64, **kwargs)


def GeCA_XS(**kwargs) -> GeCA:
    """GeCA-XS (docs/REFERENCE.md §4.1): width 384, 6 heads x 64, MLP 64, 32 hidden channels, 12 steps."""
    return GeCA(hidden_size=384, num_heads=6, head_dim=64, mlp_dim=64, hidden_channels=32, **kwargs)


def GeCA_T(**kwargs) -> GeCA:
    """Tiny CPU test model, NOT a paper configuration: width 64, 2 heads x 32, MLP 128, 16 hidden channels."""
    return GeCA(hidden_size=64, num_heads=2, head_dim=32, mlp_dim=128, hidden_channels=16, **kwargs)
