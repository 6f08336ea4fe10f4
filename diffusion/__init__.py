"""Gaussian diffusion for GeCA and its baselines: the factory `create_diffusion` (docs/REFERENCE.md §5.1).

Training uses `create_diffusion("")` (all 1000 steps) and sampling `create_diffusion("250")`; the model always
receives the original timesteps 0..999.
"""

from __future__ import annotations

from diffusion.gaussian_diffusion import LossType, ModelMeanType, ModelVarType
from diffusion.respace import SpacedDiffusion, space_timesteps
from diffusion.schedules import named_beta_schedule

__all__ = ["create_diffusion"]


def create_diffusion(
    timestep_respacing: str | None,
    noise_schedule: str = "linear",
    use_kl: bool = False,
    sigma_small: bool = False,
    predict_xstart: bool = False,
    learn_sigma: bool = True,
    rescale_learned_sigmas: bool = False,
    diffusion_steps: int = 1000,
) -> SpacedDiffusion:
    """Build the diffusion the reference scripts use (DiT's factory, same arguments and defaults).

    Args:
        timestep_respacing: kept steps: "" or None for all, "250" (comma-separated section counts), or "ddimN".
        noise_schedule: "linear" or "squaredcos_cap_v2".
        use_kl: train on the variational bound alone (scaled by T) instead of MSE + VB.
        sigma_small: with a fixed variance, use beta_tilde instead of beta.
        predict_xstart: the model predicts x_0 instead of eps.
        learn_sigma: the model outputs 2C channels, the second C interpolating the variance.
        rescale_learned_sigmas: scale the VB term by T / 1000 (a no-op at T = 1000).
        diffusion_steps: steps T of the original process.

    Returns:
        A `SpacedDiffusion` (with every step kept when no respacing is asked).
    """
    betas = named_beta_schedule(noise_schedule, diffusion_steps)
    if use_kl:
        loss_type = LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = LossType.RESCALED_MSE
    else:
        loss_type = LossType.MSE
    if learn_sigma:
        var_type = ModelVarType.LEARNED_RANGE
    else:
        var_type = ModelVarType.FIXED_SMALL if sigma_small else ModelVarType.FIXED_LARGE
    if not timestep_respacing:
        timestep_respacing = [diffusion_steps]
    return SpacedDiffusion(
        space_timesteps(diffusion_steps, timestep_respacing),
        betas=betas,
        model_mean_type=ModelMeanType.START_X if predict_xstart else ModelMeanType.EPSILON,
        model_var_type=var_type,
        loss_type=loss_type,
    )
