"""Sampling throughput through the production path (`synthesis.generate.sample_images`), and a host-sync count.

Classifier-free guidance runs the conditional and unconditional halves as one batch of 2N. A full 250-step run of
GeCA-S takes many minutes per image on a CPU, so a run may use fewer respaced steps and report images/s scaled to
250 steps (the per-step cost does not depend on the step).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from bench import NUM_CLASSES
from bench.timing import Row, make_model, random_labels, timed
from diffusion import create_diffusion
from infra import rng
from infra.host_syncs import count_host_syncs
from synthesis.generate import sample_images


@dataclass
class SamplingSpec:
    """One sampling measurement: `batch` images of `model` at `side` x `side` latents, `steps` respaced steps."""

    model: str
    batch: int
    steps: int
    side: int = 32
    cfg_scale: float = 1.5


def host_syncs_per_step(device: torch.device, steps: int = 3) -> int:
    """Host syncs made by the ancestral sampling loop of a guided GeCA-T over `steps` steps (expected: 0)."""
    model = make_model("GeCA-T", 8).to(device).eval()
    diffusion = create_diffusion(str(steps))
    gens = rng.sample_generators([0, 1], device)
    z = torch.cat([rng.randn((2, 4, 8, 8), gens, device)] * 2)
    y = torch.zeros(4, NUM_CLASSES, device=device)
    kwargs = {"y": y, "cfg_scale": 1.5, "extras": model.seed(z, generator=gens)}
    with torch.no_grad(), count_host_syncs() as counts:
        diffusion.p_sample_loop(model.forward_with_cfg, z.shape, noise=z, model_kwargs=kwargs, generator=gens)
    return sum(counts.values())


def time_sampling(spec: SamplingSpec, device: torch.device, model: torch.nn.Module) -> float:
    """Seconds of one `sample_images` call for `spec` (latents only, no VAE decoding)."""
    labels = random_labels(spec.batch, torch.Generator(device=device).manual_seed(0))
    diffusion, seeds, shape = create_diffusion(str(spec.steps)), list(range(spec.batch)), (4, spec.side, spec.side)
    return timed(lambda: sample_images(model, diffusion, labels, seeds, shape, cfg_scale=spec.cfg_scale), device)[0]


def run_sampling(specs: list[SamplingSpec], device: torch.device, repeats: int = 1) -> list[Row]:
    """Images per second of each spec, scaled to 250 respaced steps (the median of `repeats` timed runs, after a
    one-step warm-up run); then the host-sync count of the loop."""
    rows = []
    for spec in specs:
        model = make_model(spec.model, spec.side).to(device).eval()
        time_sampling(replace(spec, steps=1), device, model)
        seconds = sorted(time_sampling(spec, device, model) for _ in range(repeats))[repeats // 2]
        per_step = seconds / spec.steps
        measured = "measured" if spec.steps == 250 else f"scaled from {spec.steps} steps"
        rate = f"{spec.batch / (250 * per_step):.3g} images/s at 250 steps ({measured})"
        label = f"sampling, CFG {spec.cfg_scale} in one batch of 2N, {spec.side}x{spec.side} latents"
        rows.append(Row(label, f"{spec.model}, N={spec.batch}", rate, f"{per_step * 1e3:.1f} ms per denoising call"))
    syncs = host_syncs_per_step(device)
    return [*rows, Row("sampling loop host syncs", "GeCA-T, 3 guided steps", f"{syncs} calls", "", "0", syncs == 0)]
