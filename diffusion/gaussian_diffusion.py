"""The Gaussian diffusion process: forward noising, the learned reverse process, its losses and samplers.

Structure after IDDPM/DiT (Nichol & Dhariwal 2021) with the GeCA changes of the reference (docs/REFERENCE.md §5.4): in
training a model that carries a state starts from the initial state it gives for the batch and maps its raw output
to the prediction the loss reads (the `Denoiser` protocol; this module knows no cell layout), and the samplers thread
the state a model returns (`extras`) into the next reverse step (Gene Heredity Guidance). DDIM threads it too, which
the reference did not. With `inherit_state=False` the samplers thread nothing and a stateful model starts every step
afresh, as in training (the fresh-seed ablation of GHG, docs/DECISIONS.md §C7).

Conventions: `t` always indexes this object's own (possibly respaced) timesteps; the model sees whatever the
wrapper of `_wrap_model` gives it (the original timesteps for `SpacedDiffusion`). Tables are float64 and cast to
the dtype of the tensor they multiply when looked up.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from diffusion.schedules import diffusion_tables
from infra import rng
from infra.distributed import unwrap_model

ModelFn = Callable[..., Any]


@runtime_checkable
class Denoiser(Protocol):
    """What `GaussianDiffusion.training_losses` asks of a network besides calling it (docs/REFERENCE.md §5.4.1).

    Every registry model answers: DiT and the UNet trivially (no state; the output is already the prediction), GeCA
    with its seed cell and the channels of its cell state that hold the prediction. A plain callable that does not
    implement it is treated as the trivial answer.
    """

    def initial_extras(self, x: torch.Tensor, generator: rng.Generator = None) -> torch.Tensor | None:
        """The `extras` a denoising call on `x` ((N, C, H, W)) starts from, or None for a model without state."""

    def training_prediction(self, output: torch.Tensor, channels: int) -> torch.Tensor:
        """The prediction in a train-mode `forward` output: `channels` channels (eps or x_0, then v) first.

        Args:
            output: what `forward` returned in train mode, (N, C_out, H, W).
            channels: prediction channels the loss reads (2C with a learned variance, else C).

        Returns:
            (N, channels, H, W), or the output unchanged when it already is the prediction (the loss then checks
            its channel count).
        """


class ModelMeanType(enum.Enum):
    """What the first C output channels predict."""

    EPSILON = enum.auto()  # the noise eps (GeCA, DiT)
    START_X = enum.auto()  # x_0 directly (`predict_xstart=True`)


class ModelVarType(enum.Enum):
    """How the reverse-process variance is obtained."""

    LEARNED_RANGE = enum.auto()  # interpolated in log space between beta_tilde and beta (IDDPM eq. 15)
    FIXED_SMALL = enum.auto()  # beta_tilde_t
    FIXED_LARGE = enum.auto()  # beta_t (with beta_tilde_1 at t = 0)


class LossType(enum.Enum):
    """The training objective."""

    MSE = enum.auto()  # eps MSE (+ VB when the variance is learned): IDDPM's L_hybrid with lambda = 1
    RESCALED_MSE = enum.auto()  # as MSE with VB scaled by T / 1000
    RESCALED_KL = enum.auto()  # the variational bound alone, times T


def device_copy(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A table's one copy to `device`. Non-blocking, so the first sampling step does not wait for the device (the
    numpy source lives as long as the diffusion object that caches the copy)."""
    return torch.from_numpy(array).to(device, non_blocking=True)


def extract(table: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample coefficients `table[t]`, cast to x's dtype and broadcast to x's shape.

    Args:
        table: per-timestep values, shape (T,), on t's device (float64 in this package).
        t: timestep indices, shape (N,), int64.
        x: the tensor the coefficients will multiply, shape (N, ...).

    Returns:
        Tensor of x's shape and dtype, constant over all dimensions but the first.
    """
    coef = table[t].to(x.dtype)
    return coef.view(-1, *([1] * (x.ndim - 1))).expand(x.shape)


def learned_range_log_variance(v: torch.Tensor, min_log: torch.Tensor, max_log: torch.Tensor) -> torch.Tensor:
    """IDDPM eq. 15: log Sigma = phi log beta_t + (1 - phi) log beta_tilde_t with phi = (v + 1) / 2.

    Args:
        v: raw model output in (roughly) [-1, 1], shape (N, C, H, W).
        min_log: log beta_tilde_t (clipped at t = 0), broadcastable to v.
        max_log: log beta_t, broadcastable to v.

    Returns:
        The log variance, shape of v.
    """
    frac = (v + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log


def ddim_step(
    pred_xstart: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar: torch.Tensor,
    alpha_bar_prev: torch.Tensor,
    eta: float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """One DDIM update (Song et al. 2021, eq. 12), x_t -> x_{t-1} given predictions of x_0 and eps.

    Args:
        pred_xstart: predicted x_0, shape (N, C, H, W).
        eps: the noise implied by pred_xstart at x_t, same shape.
        alpha_bar: abar_t broadcast to the same shape.
        alpha_bar_prev: abar_{t-1} broadcast to the same shape (1 at the last step).
        eta: 0 for the deterministic sampler, 1 for DDPM-like ancestral noise.
        noise: standard normal noise with the last step's rows zeroed, or None when eta is 0.

    Returns:
        x_{t-1}, shape (N, C, H, W).
    """
    sigma = eta * torch.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar)) * torch.sqrt(1.0 - alpha_bar / alpha_bar_prev)
    mean = pred_xstart * torch.sqrt(alpha_bar_prev) + torch.sqrt(1.0 - alpha_bar_prev - sigma**2) * eps
    return mean if noise is None else mean + sigma * noise


def split_model_output(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A model's prediction and the cell state it hands on: `(out, extras)` for a tuple, `(out, None)` otherwise."""
    if isinstance(output, tuple):
        out, extras = output
        return out, extras
    return output, None


def _sampling_device(model: ModelFn, noise: torch.Tensor | None, device: torch.device | str | None) -> torch.device:
    """The device of a sampling loop: explicit, else the noise's, else the model's parameters', else CPU."""
    if device is not None:
        return torch.device(device)
    if noise is not None:
        return noise.device
    owner = model if isinstance(model, nn.Module) else getattr(model, "__self__", None)
    if isinstance(owner, nn.Module):
        param = next(owner.parameters(), None)
        if param is not None:
            return param.device
    return torch.device("cpu")


class GaussianDiffusion:
    """A discrete-time Gaussian diffusion with T steps and the reverse process parameterised by a model.

    Args:
        betas: float64 array of shape (T,).
        model_mean_type: what the model's first C channels predict.
        model_var_type: how the variance is obtained.
        loss_type: the training objective.
    """

    def __init__(
        self,
        *,
        betas: np.ndarray,
        model_mean_type: ModelMeanType,
        model_var_type: ModelVarType,
        loss_type: LossType,
    ) -> None:
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.tables = diffusion_tables(betas)
        self.num_timesteps = len(self.tables.betas)
        post_var = self.tables.posterior_variance
        # FIXED_LARGE uses beta_t, except beta_tilde_1 at t = 0 for a better decoder log-likelihood (IDDPM).
        large_var = np.append(post_var[1], self.tables.betas[1:]) if self.num_timesteps > 1 else self.tables.betas
        self._np_tables = {
            **dataclasses.asdict(self.tables),
            "log_betas": np.log(self.tables.betas),
            "fixed_large_variance": large_var,
            "fixed_large_log_variance": np.log(large_var),
        }
        self._device_tables: dict[torch.device, dict[str, torch.Tensor]] = {}

    # ----- table lookup -----------------------------------------------------------------------------------------

    def _coef(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Table `name` at timesteps t, in x's dtype and shape; tables are copied to a device once."""
        tables = self._device_tables.get(t.device)
        if tables is None:
            tables = {k: device_copy(v, t.device) for k, v in self._np_tables.items()}
            self._device_tables[t.device] = tables
        return extract(tables[name], t, x)

    def _wrap_model(self, model: ModelFn) -> ModelFn:
        """The callable that receives this object's timesteps; identity here, respacing maps them."""
        return model

    # ----- forward process ------------------------------------------------------------------------------------

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (DDPM eq. 4).

        Args:
            x_start: clean data x_0, shape (N, C, H, W).
            t: timesteps, shape (N,).
            noise: standard normal eps, shape of x_start.

        Returns:
            x_t, shape (N, C, H, W).
        """
        return (
            self._coef("sqrt_alphas_cumprod", t, x_start) * x_start
            + self._coef("sqrt_one_minus_alphas_cumprod", t, x_start) * noise
        )

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0) (DDPM eq. 6-7).

        Args:
            x_start: x_0, shape (N, C, H, W).
            x_t: x_t, same shape.
            t: timesteps, shape (N,).

        Returns:
            Three tensors of shape (N, C, H, W).
        """
        mean = self._coef("posterior_mean_coef1", t, x_t) * x_start + self._coef("posterior_mean_coef2", t, x_t) * x_t
        var = self._coef("posterior_variance", t, x_t)
        log_var = self._coef("posterior_log_variance_clipped", t, x_t)
        return mean, var, log_var

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = sqrt(1 / abar_t) x_t - sqrt(1 / abar_t - 1) eps (inverting DDPM eq. 4)."""
        return (
            self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._coef("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        """eps = (sqrt(1 / abar_t) x_t - x_0) / sqrt(1 / abar_t - 1)."""
        return (self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_xstart) / self._coef(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    # ----- reverse process ------------------------------------------------------------------------------------

    def p_mean_variance_from_output(
        self,
        model_output: torch.Tensor,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = False,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The Gaussian p(x_{t-1} | x_t) implied by a model output.

        Args:
            model_output: (N, 2C, H, W) for a learned variance (prediction then v), else (N, C, H, W).
            x: x_t, shape (N, C, H, W).
            t: timesteps, shape (N,).
            clip_denoised: clamp the predicted x_0 to [-1, 1] (the GeCA scripts never do).
            denoised_fn: optional map applied to the predicted x_0 before the mean is formed.

        Returns:
            Dict with "mean", "variance", "log_variance" and "pred_xstart", each (N, C, H, W).
        """
        channels = x.shape[1]
        if self.model_var_type is ModelVarType.LEARNED_RANGE:
            assert model_output.shape[1] == 2 * channels, f"expected {2 * channels} output channels"
            model_output, v = torch.split(model_output, channels, dim=1)
            min_log = self._coef("posterior_log_variance_clipped", t, x)
            max_log = self._coef("log_betas", t, x)
            log_var = learned_range_log_variance(v, min_log, max_log)
            var = torch.exp(log_var)
        elif self.model_var_type is ModelVarType.FIXED_LARGE:
            var = self._coef("fixed_large_variance", t, x)
            log_var = self._coef("fixed_large_log_variance", t, x)
        else:
            var = self._coef("posterior_variance", t, x)
            log_var = self._coef("posterior_log_variance_clipped", t, x)

        if self.model_mean_type is ModelMeanType.EPSILON:
            pred_xstart = self.predict_xstart_from_eps(x, t, model_output)
        else:
            pred_xstart = model_output
        if denoised_fn is not None:
            pred_xstart = denoised_fn(pred_xstart)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": var, "log_variance": log_var, "pred_xstart": pred_xstart}

    def p_mean_variance(
        self,
        model: ModelFn,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = False,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Call the model at (x_t, t) and form p(x_{t-1} | x_t).

        Args:
            model: callable `model(x, t, **model_kwargs)` returning an output tensor or (output, extras).
            x: x_t, shape (N, C, H, W).
            t: timesteps of this process, shape (N,).
            clip_denoised: clamp the predicted x_0 to [-1, 1].
            denoised_fn: optional map applied to the predicted x_0.
            model_kwargs: extra keyword arguments of the model (y, cfg_scale, extras, generator).

        Returns:
            The dict of `p_mean_variance_from_output` plus "extras" (the returned cell state, or None).
        """
        output, extras = split_model_output(self._wrap_model(model)(x, t, **(model_kwargs or {})))
        out = self.p_mean_variance_from_output(output, x, t, clip_denoised, denoised_fn)
        out["extras"] = extras
        return out

    def p_sample(
        self,
        model: ModelFn,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = False,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        generator: rng.Generator = None,
    ) -> dict[str, Any]:
        """One ancestral step x_{t-1} = mu + 1[t != 0] sigma z (DDPM Algorithm 2).

        Args:
            model, x, t, clip_denoised, denoised_fn, model_kwargs: as `p_mean_variance`.
            generator: source of z (see infra.rng).

        Returns:
            Dict with "sample" (x_{t-1}), "pred_xstart" and "extras".
        """
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        noise = rng.randn(x.shape, generator, x.device, x.dtype)
        nonzero = (t != 0).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))  # built on device: no host sync
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"], "extras": out["extras"]}

    def _loop(
        self,
        step: Callable[..., dict[str, Any]],
        model: ModelFn,
        shape: tuple[int, ...],
        noise: torch.Tensor | None,
        model_kwargs: dict[str, Any] | None,
        device: torch.device | str | None,
        progress: bool,
        generator: rng.Generator,
        inherit_state: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Run `step` from t = T - 1 down to 0.

        With `inherit_state` the model's returned cell state is the next step's `extras` (GHG,
        docs/REFERENCE.md §5.4); without it no `extras` is ever passed, so a cellular model seeds itself at every
        step from `generator` (output and hidden channels fresh, as in training).
        """
        if not inherit_state and (model_kwargs or {}).get("extras") is not None:
            raise ValueError(
                "inherit_state=False grows every step from a fresh seed: model_kwargs must not hold an initial 'extras'"
            )
        device = _sampling_device(model, noise, device)
        if noise is not None:
            if tuple(noise.shape) != tuple(shape):
                raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
            x = noise.to(device)
        else:
            x = rng.randn(shape, generator, device)
        # A copy: the caller's dict keeps its initial extras.
        kwargs = dict(model_kwargs or {})
        if generator is not None:
            kwargs["generator"] = generator
        indices: Any = range(self.num_timesteps - 1, -1, -1)
        if progress:
            indices = tqdm(indices)
        for i in indices:
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            with torch.no_grad():
                out = step(model, x, t, model_kwargs=kwargs, generator=generator)
            yield out
            x = out["sample"]
            if inherit_state and out["extras"] is not None:
                kwargs["extras"] = out["extras"]

    def p_sample_loop_progressive(
        self,
        model: ModelFn,
        shape: tuple[int, ...],
        noise: torch.Tensor | None = None,
        clip_denoised: bool = False,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        generator: rng.Generator = None,
        inherit_state: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Ancestral sampling, yielding the dict of `p_sample` after every step.

        When the model returns (output, extras), `model_kwargs["extras"]` of the next step is that cell state,
        so a cellular model inherits its genes across reverse steps (GHG); the initial extras come from the
        caller (e.g. `model.initial_extras(z)`). With `inherit_state=False` no extras are passed at any step: a
        cellular model then starts every step from a fresh seed cell drawn from `generator` (output and hidden
        channels), exactly as in training.

        Args:
            model: `model.forward` or `model.forward_with_cfg` (or any callable with that signature).
            shape: (N, C, H, W) of the sample.
            noise: optional initial x_T; drawn from `generator` when None.
            clip_denoised: clamp predicted x_0 to [-1, 1].
            denoised_fn: optional map applied to predicted x_0.
            model_kwargs: y, cfg_scale, the initial extras, ...; not modified.
            device: device of the loop; defaults to the noise's or the model's.
            progress: show a tqdm bar.
            generator: source of every draw (see infra.rng); also passed to the model as `generator`.
            inherit_state: thread the returned cell state into the next step (GHG, the reference); False: never
                pass extras (fresh-seed sampling).

        Yields:
            Dicts with "sample", "pred_xstart" and "extras".

        Raises:
            ValueError: when `noise` does not have shape `shape`, or when model_kwargs holds extras while
                `inherit_state` is False.
        """

        def step(model: ModelFn, x: torch.Tensor, t: torch.Tensor, **kw: Any) -> dict[str, Any]:
            return self.p_sample(model, x, t, clip_denoised, denoised_fn, **kw)

        yield from self._loop(step, model, shape, noise, model_kwargs, device, progress, generator, inherit_state)

    def p_sample_loop(
        self,
        model: ModelFn,
        shape: tuple[int, ...],
        noise: torch.Tensor | None = None,
        clip_denoised: bool = False,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        generator: rng.Generator = None,
        inherit_state: bool = True,
    ) -> torch.Tensor:
        """The final sample x_0 of `p_sample_loop_progressive`, shape `shape`."""
        steps = self.p_sample_loop_progressive(
            model, shape, noise, clip_denoised, denoised_fn, model_kwargs, device, progress, generator, inherit_state
        )
        return deque(steps, maxlen=1).pop()["sample"]  # keeps only the last step in memory

    def ddim_sample(
        self,
        model: ModelFn,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = False,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        eta: float = 0.0,
        generator: rng.Generator = None,
    ) -> dict[str, Any]:
        """One DDIM step (see `ddim_step`); noise is drawn only when eta > 0.

        Returns:
            Dict with "sample", "pred_xstart" and "extras".
        """
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        eps = self.predict_eps_from_xstart(x, t, out["pred_xstart"])
        noise = None
        if eta > 0:
            nonzero = (t != 0).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
            noise = nonzero * rng.randn(x.shape, generator, x.device, x.dtype)
        sample = ddim_step(
            out["pred_xstart"],
            eps,
            self._coef("alphas_cumprod", t, x),
            self._coef("alphas_cumprod_prev", t, x),
            eta,
            noise,
        )
        return {"sample": sample, "pred_xstart": out["pred_xstart"], "extras": out["extras"]}

    def ddim_sample_loop_progressive(
        self,
        model: ModelFn,
        shape: tuple[int, ...],
        noise: torch.Tensor | None = None,
        clip_denoised: bool = False,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        eta: float = 0.0,
        generator: rng.Generator = None,
        inherit_state: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """DDIM sampling, yielding after every step; threads extras like `p_sample_loop_progressive`.

        Use with a respaced process, e.g. `create_diffusion("ddim50")`. Arguments (`inherit_state` included) as
        `p_sample_loop_progressive`, plus `eta` (0: deterministic given x_T).
        """

        def step(model: ModelFn, x: torch.Tensor, t: torch.Tensor, **kw: Any) -> dict[str, Any]:
            return self.ddim_sample(model, x, t, clip_denoised, denoised_fn, eta=eta, **kw)

        yield from self._loop(step, model, shape, noise, model_kwargs, device, progress, generator, inherit_state)

    def ddim_sample_loop(
        self,
        model: ModelFn,
        shape: tuple[int, ...],
        noise: torch.Tensor | None = None,
        clip_denoised: bool = False,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        eta: float = 0.0,
        generator: rng.Generator = None,
        inherit_state: bool = True,
    ) -> torch.Tensor:
        """The final sample of `ddim_sample_loop_progressive`, shape `shape`."""
        steps = self.ddim_sample_loop_progressive(
            model,
            shape,
            noise,
            clip_denoised,
            denoised_fn,
            model_kwargs,
            device,
            progress,
            eta,
            generator,
            inherit_state,
        )
        return deque(steps, maxlen=1).pop()["sample"]

    # ----- training ---------------------------------------------------------------------------------------------

    def vb_terms_bpd(
        self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """One term of the variational bound per sample, in bits per dimension.

        L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0 and the discretised Gaussian decoder
        NLL -log p(x_0 | x_1) at t = 0 (DDPM eq. 5), each averaged over C, H, W and divided by ln 2.

        Args:
            model_output: as `p_mean_variance_from_output`.
            x_start: x_0, shape (N, C, H, W).
            x_t: x_t, same shape.
            t: timesteps, shape (N,).

        Returns:
            Tensor of shape (N,).
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        p = self.p_mean_variance_from_output(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, p["mean"], 0.5 * p["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(
        self,
        model: ModelFn,
        x_start: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
        noise: torch.Tensor | None = None,
        generator: rng.Generator = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample training loss at timesteps t.

        The model (looked up through DDP/compile wrappers) answers the `Denoiser` protocol: its
        `initial_extras(x_t)` is passed as `extras` when not None (GeCA: a fresh seed cell per sample, hidden
        channels 0, docs/REFERENCE.md §5.4.1), and `training_prediction` picks the prediction out of its raw
        output (GeCA: the output channels of its full cell state). A callable without the protocol gets no extras
        and its output is the prediction.

        With a learned variance the loss is MSE + VB, where VB sees the eps channels detached, so it trains only
        the variance channels (IDDPM L_hybrid).

        Args:
            model: the network (possibly DDP/compile-wrapped), called as `model(x_t, t, **model_kwargs)`.
            x_start: x_0, shape (N, C, H, W).
            t: timesteps of this process, shape (N,), int64.
            model_kwargs: y and other model arguments; not modified.
            noise: eps, shape of x_start; drawn from `generator` when None.
            generator: source of eps and of the seed; also passed to the model (see infra.rng).

        Returns:
            Dict with "loss", "mse" and "vb", each of shape (N,) ("vb" is 0 for a fixed variance).

        Raises:
            ValueError: when the model's prediction does not have 2C channels (C with a fixed variance).
        """
        kwargs = dict(model_kwargs or {})
        if noise is None:
            noise = rng.randn(x_start.shape, generator, x_start.device, x_start.dtype)
        x_t = self.q_sample(x_start, t, noise)

        # Look through DDP/compile before the respacing wrapper hides the model's methods.
        bare = unwrap_model(model) if isinstance(model, nn.Module) else model
        denoiser = bare if isinstance(bare, Denoiser) else None
        # The initial state is drawn before the model call so that it comes first from `generator`.
        extras = None if denoiser is None else denoiser.initial_extras(x_t, generator=generator)
        if extras is not None:
            kwargs["extras"] = extras
        if generator is not None:
            kwargs["generator"] = generator
        output = self._wrap_model(model)(x_t, t, **kwargs)

        channels = x_start.shape[1]
        learned = self.model_var_type is ModelVarType.LEARNED_RANGE
        out_channels = 2 * channels if learned else channels
        if denoiser is not None:
            output = denoiser.training_prediction(output, out_channels)
        if output.shape[1] != out_channels:
            raise ValueError(f"model output has {output.shape[1]} channels, expected {out_channels}")

        prediction = output[:, :channels]
        target = noise if self.model_mean_type is ModelMeanType.EPSILON else x_start
        mse = mean_flat((target - prediction) ** 2)
        if self.loss_type is LossType.RESCALED_KL:
            vb = self.vb_terms_bpd(output, x_start, x_t, t) * self.num_timesteps
            return {"loss": vb, "mse": mse, "vb": vb}
        if learned:
            # The mean is frozen so that VB only trains the variance (IDDPM section 3.1).
            frozen = torch.cat([prediction.detach(), output[:, channels:]], dim=1)
            vb = self.vb_terms_bpd(frozen, x_start, x_t, t)
            if self.loss_type is LossType.RESCALED_MSE:
                vb = vb * (self.num_timesteps / 1000.0)
        else:
            vb = torch.zeros_like(mse)
        return {"loss": mse + vb, "mse": mse, "vb": vb}
