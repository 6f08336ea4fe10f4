"""Training-timestep samplers with importance weights (IDDPM section 3.3); the GeCA scripts draw t uniformly."""

from __future__ import annotations

import numpy as np
import torch

from infra.distributed import all_gather_objects


class UniformSampler:
    """t ~ U{0..T-1}, every weight 1.

    Args:
        num_timesteps: T of the diffusion the losses are computed on.
    """

    def __init__(self, num_timesteps: int) -> None:
        self.num_timesteps = num_timesteps

    def weights(self) -> np.ndarray:
        """Unnormalised sampling weights, shape (T,)."""
        return np.ones(self.num_timesteps, dtype=np.float64)

    def sample(
        self, batch_size: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw timesteps with probability p_t and importance weights 1 / (T p_t), so E[w L_t] = mean_t L_t.

        Args:
            batch_size: number of timesteps N.
            device: device of the returned tensors.
            generator: optional CPU torch generator.

        Returns:
            (timesteps int64 of shape (N,), weights float32 of shape (N,)).
        """
        p = torch.from_numpy(self.weights() / self.weights().sum())
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        w = 1.0 / (len(p) * p[t])
        return t.to(device), w.float().to(device)


class LossSecondMomentResampler(UniformSampler):
    """p_t proportional to sqrt(E[L_t^2]) over the last `history` losses of each t, uniform until warmed up.

    Args:
        num_timesteps: T.
        history: losses remembered per timestep.
        uniform_prob: probability mass mixed in uniformly, so no timestep is starved.
    """

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001) -> None:
        super().__init__(num_timesteps)
        self.uniform_prob = uniform_prob
        self.loss_history = np.zeros((num_timesteps, history), dtype=np.float64)
        self.loss_counts = np.zeros(num_timesteps, dtype=np.int64)

    def weights(self) -> np.ndarray:
        history = self.loss_history.shape[1]
        if not (self.loss_counts == history).all():
            return np.ones(self.num_timesteps, dtype=np.float64)
        w = np.sqrt(np.mean(self.loss_history**2, axis=-1))
        w = w / w.sum() * (1.0 - self.uniform_prob)
        return w + self.uniform_prob / self.num_timesteps

    def update_with_all_losses(self, timesteps: list[int], losses: list[float]) -> None:
        """Record losses of every rank; the newest `history` per timestep are kept."""
        history = self.loss_history.shape[1]
        for t, loss in zip(timesteps, losses, strict=True):
            if self.loss_counts[t] == history:
                self.loss_history[t] = np.roll(self.loss_history[t], -1)
                self.loss_history[t, -1] = loss
            else:
                self.loss_history[t, self.loss_counts[t]] = loss
                self.loss_counts[t] += 1

    def update_with_local_losses(self, local_ts: torch.Tensor, local_losses: torch.Tensor) -> None:
        """Gather this rank's (N,) timesteps and losses from every rank, then record them all (same on all ranks)."""
        gathered = all_gather_objects((local_ts.tolist(), local_losses.detach().float().tolist()))
        timesteps = [t for ts, _ in gathered for t in ts]
        losses = [loss for _, ls in gathered for loss in ls]
        self.update_with_all_losses(timesteps, losses)


def create_named_schedule_sampler(name: str, num_timesteps: int) -> UniformSampler:
    """A sampler by name: "uniform" or "loss-second-moment".

    Raises:
        ValueError: for an unknown name.
    """
    if name == "uniform":
        return UniformSampler(num_timesteps)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(num_timesteps)
    raise ValueError(f"unknown schedule sampler: {name!r} (expected 'uniform' or 'loss-second-moment')")
