"""Method-breaking edits that the default test suite must notice (`make mutants`, issue 21).

Each entry replaces one exact piece of code (it must occur exactly once in its file) with a broken version. `first`
names the tests most likely to notice, run before the whole suite so that a caught edit costs seconds; an edit they
miss is still run against the whole default suite. When a regression slips through the suite, add its edit here
together with the test that catches it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    """One edit: `old` -> `new` in `path`, what it breaks, and the tests to try first."""

    name: str
    path: str
    old: str
    new: str
    breaks: str
    first: tuple[str, ...] = ()


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "train-no-optimiser-step",
        "training/loop.py",
        "    run.opt.step()\n",
        "    pass  # mutant: no optimiser step\n",
        "the denoiser never learns",
        ("tests/test_learning.py",),
    ),
    Mutant(
        "train-no-ema-update",
        "training/loop.py",
        "    update_ema(run.ema, unwrap_model(model), args.ema_decay)\n",
        "    pass  # mutant: the EMA weights never move\n",
        "sampling uses the initial weights",
        ("tests/test_learning.py",),
    ),
    Mutant(
        "diffusion-no-noise",
        "diffusion/gaussian_diffusion.py",
        '            + self._coef("sqrt_one_minus_alphas_cumprod", t, x_start) * noise\n',
        '            + 0 * self._coef("sqrt_one_minus_alphas_cumprod", t, x_start) * noise\n',
        "training inputs carry no noise: the denoiser learns nothing useful",
        ("tests/diffusion", "tests/test_learning.py"),
    ),
    Mutant(
        "sampling-labels-zeroed",
        "synthesis/generate.py",
        "        labels = torch.as_tensor(job.labels[idx], dtype=torch.float32, device=dist.device)\n",
        "        labels = 0 * torch.as_tensor(job.labels[idx], dtype=torch.float32, device=dist.device)\n",
        "the sampling scripts ignore the labels their CSV lists",
        ("tests/test_learning.py",),
    ),
    Mutant(
        "cfg-off",
        "models/conditioning.py",
        "    half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)\n",
        "    half_eps = cond_eps + 0 * cfg_scale * (cond_eps - uncond_eps)\n",
        "classifier-free guidance silently off",
        ("tests/models", "tests/test_learning.py"),
    ),
    Mutant(
        "ghg-no-heredity-in-model",
        "models/geca.py",
        "        if extras is not None:\n            # GHG:",
        "        if False:\n            # GHG:",
        "Gene Heredity Guidance never inherits the hidden genes",
        ("tests/models/test_geca.py", "tests/test_cli_sample.py"),
    ),
    Mutant(
        "ghg-sampler-drops-state",
        "diffusion/gaussian_diffusion.py",
        '            if inherit_state and out["extras"] is not None:\n',
        "            if False:\n",
        "the sampler does not thread the cell state from one denoising step to the next",
        ("tests/test_cli_sample.py", "tests/diffusion"),
    ),
    Mutant(
        "vae-scaling-factor-ignored",
        "data/vae.py",
        "    value = float(value)\n",
        "    value = LATENT_SCALE  # mutant: SD's factor whatever the VAE says\n",
        "latents of a domain VAE are scaled by SD's 0.18215 instead of its own factor",
        ("tests/data/test_vae.py", "tests/test_cli_extract.py"),
    ),
    Mutant(
        "kid-biased",
        "metrics/kid.py",
        "    sum_xx = k_xx.sum() - k_xx.diagonal().sum()\n",
        "    sum_xx = k_xx.sum()\n",
        "KID keeps the diagonal of the real-real kernel (biased MMD)",
        ("tests/metrics/test_kid.py",),
    ),
    Mutant(
        "kid-se-wrong-scale",
        "metrics/kid.py",
        "    variance = (n - 1) / n * ((loo - loo.mean()) ** 2).sum()\n",
        "    variance = ((loo - loo.mean()) ** 2).mean()\n",
        "KID's standard error misses the jackknife's (n - 1) factor: noise understated n-fold",
        ("tests/metrics/test_kid.py",),
    ),
    Mutant(
        "gg-sign-flipped",
        "metrics/fld.py",
        "    return 100 * (nll_train - nll_test)\n",
        "    return 100 * (nll_test - nll_train)\n",
        "the generalization gap reports memorisation as generalisation",
        ("tests/metrics/test_fld.py",),
    ),
    Mutant(
        "classifier-no-optimiser-step",
        "downstream/training.py",
        "        optimizer.step()\n",
        "        pass  # mutant: the classifier never learns\n",
        "the downstream classifier stays at its initialisation",
        ("tests/test_learning.py",),
    ),
    Mutant(
        "best-rule-ignored",
        "training/selection.py",
        '    if rule == "within-noise" and within_noise(new, lowest, z):\n',
        "    if False:\n",
        "--best-rule within-noise behaves as the reference's lowest-KID rule",
        ("tests/training",),
    ),
)
