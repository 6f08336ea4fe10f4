"""Timestep respacing: a diffusion that keeps a subset of the original steps (IDDPM section 4, docs/REFERENCE.md §5.3).

The model of a respaced process is always called with the ORIGINAL timestep of each kept step (no rescaling
to 1000), as in the reference.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from diffusion.gaussian_diffusion import GaussianDiffusion, ModelFn, device_copy


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> set[int]:
    """The original timesteps kept when striding each of equal sections of [0, num_timesteps).

    The range is cut into len(section_counts) sections (the first `num_timesteps % len` one step longer); a
    section of `size` steps keeping `count` steps takes start + round(k * (size - 1) / (count - 1)) for
    k = 0..count-1, the fractional stride accumulated in floating point and rounded half to even, exactly as the
    reference does. "ddimN" instead takes range(0, num_timesteps, s) with the smallest integer stride s giving
    exactly N steps (the DDIM paper's striding).

    Args:
        num_timesteps: steps of the original process (1000).
        section_counts: a comma-separated string ("250", "10,15,20"), a sequence of ints, or "ddimN".

    Returns:
        The set of kept original timesteps.

    Raises:
        ValueError: when a section is shorter than its count, or no integer stride gives N steps.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot take exactly {desired} of {num_timesteps} steps with an integer stride")
        section_counts = [int(c) for c in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    kept: set[int] = set()
    start = 0
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.add(start + round(position))
            position += stride
        start += size
    return kept


def respaced_betas(alphas_cumprod: np.ndarray, use_timesteps: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """Betas of the process that jumps between the kept steps: beta'_i = 1 - abar_{s_i} / abar_{s_{i-1}}.

    The cumulative products of the new process equal the original ones at the kept steps.

    Args:
        alphas_cumprod: abar of the original process, float64 array of shape (T,).
        use_timesteps: kept original timesteps s_0 < s_1 < ... (any order, duplicates ignored).

    Returns:
        (betas of shape (T',), float64; the original timestep of each new index, int64 of shape (T',)).
    """
    steps = np.array(sorted(set(use_timesteps)), dtype=np.int64)
    kept = alphas_cumprod[steps]
    previous = np.append(1.0, kept[:-1])
    return 1.0 - kept / previous, steps


class _OriginalTimestepModel:
    """Calls the model with the original timesteps of the respaced indices it is given."""

    def __init__(self, model: ModelFn, diffusion: SpacedDiffusion) -> None:
        self.model = model
        self.diffusion = diffusion

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> Any:
        return self.model(x, self.diffusion.original_timesteps(t), **kwargs)


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion keeping only `use_timesteps` of a base process built from the same keyword arguments.

    Args:
        use_timesteps: original timesteps to keep.
        betas: the base process's betas, shape (T,).
        **kwargs: the other arguments of `GaussianDiffusion`.
    """

    def __init__(self, use_timesteps: Iterable[int], *, betas: np.ndarray, **kwargs: Any) -> None:
        base_alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
        new_betas, self.timestep_map = respaced_betas(base_alphas_cumprod, use_timesteps)
        self.original_num_steps = len(betas)
        self._device_maps: dict[torch.device, torch.Tensor] = {}
        super().__init__(betas=new_betas, **kwargs)

    def original_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The original timestep of each respaced index, shape of t, on t's device (the map is copied once)."""
        table = self._device_maps.get(t.device)
        if table is None:
            table = device_copy(self.timestep_map, t.device)
            self._device_maps[t.device] = table
        return table[t].to(t.dtype)

    def _wrap_model(self, model: ModelFn) -> ModelFn:
        if isinstance(model, _OriginalTimestepModel):
            return model
        return _OriginalTimestepModel(model, self)
