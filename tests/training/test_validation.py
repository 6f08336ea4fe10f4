"""Validation samples (training/validation.py): `Validator._sample` against its rule written out, and the GHG
flag's effect on the cell states of the sampling steps."""

from __future__ import annotations

import pytest
import torch

import train
from data.transforms import to_uint8
from diffusion import create_diffusion
from infra import rng
from models import DiT_models
from tests.helpers.sampling_probes import is_fresh_seed, random_weights, record_starts
from training.validation import Validator


@pytest.mark.parametrize(
    ("key", "mode", "cfg", "ghg"),
    [
        ("GeCA-T", "legacy", "1.5", True),  # legacy ignores --cfg-scale and the labels
        ("GeCA-T", "final", "1.5", True),
        ("GeCA-T", "final", "1", True),
        ("GeCA-T", "final", "1.5", False),
        ("DiT-T/2", "final", "1.5", True),
    ],
)
def test_validation_samples_follow_their_rule(key, mode, cfg, ghg):
    """Validator._sample (through sample_images) against the rule written out: same seeds, calls and bits."""
    torch.manual_seed(0)
    net = DiT_models[key](input_size=8, num_classes=11, in_channels=4).eval()
    ema = DiT_models[key](input_size=8, num_classes=11, in_channels=4).eval()  # other weights: shows which is used
    for module in (net, ema):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.01 * torch.randn_like(p))  # zero-initialised output layers would hide the difference
    flags = ["--model", key, "--val-mode", mode, "--cfg-scale", cfg, "--diffusion-steps", "30"]
    flags += ["--num-sampling-steps", "4", "--global-seed", "3", "--num-classes", "11", "--in_channels", "4"]
    args = train.build_parser().parse_args([*flags, "--ghg" if ghg else "--no-ghg"])
    # Validator.__init__ gives legacy the full-length diffusion; 4 steps keep this untrained net's samples unsaturated
    # enough to tell noise streams apart.
    diffusion = create_diffusion("4", diffusion_steps=30)
    labels = torch.eye(11)[:4]
    validator = object.__new__(Validator)  # only what _sample reads
    validator.args, validator.net, validator.device, validator.latent_size = args, net, torch.device("cpu"), 8
    validator.diffusion, validator.vae, validator.real_labels = diffusion, None, labels
    got = validator._sample(ema, 1, 3, step=5)

    # The rule, written out: images 1 and 2 of the validation at step 5 under seed 3.
    model = net if mode == "legacy" else ema
    gens = rng.sample_generators([(3 * rng.SEED_STRIDE + 5) * 10_000 + i for i in (1, 2)])
    z = rng.randn((2, 4, 8, 8), gens)
    y = torch.zeros(2, 11) if mode == "legacy" else labels[1:3]
    kwargs, fn = {"y": y}, model.forward
    if mode == "final" and float(cfg) > 1:
        z, kwargs, fn = (
            torch.cat([z, z]),
            {"y": torch.cat([y, torch.zeros_like(y)]), "cfg_scale": 1.5},
            model.forward_with_cfg,
        )
    if ghg and key == "GeCA-T":
        kwargs["extras"] = model.seed(z, generator=gens)
    with torch.no_grad():
        x0 = diffusion.p_sample_loop(fn, z.shape, noise=z, model_kwargs=kwargs, generator=gens, inherit_state=ghg)
    want = to_uint8(x0[:2])
    assert got.dtype == torch.uint8 and torch.equal(got, want)
    # Legacy samples the online network, final the EMA one: swapping them changes the images.
    validator.net = ema
    assert not torch.equal(validator._sample(net, 1, 3, step=5), got)


@pytest.mark.parametrize("ghg", [True, False])
def test_train_validation_sampling_honours_ghg_flag(ghg):
    model = random_weights(DiT_models["GeCA-T"](input_size=8, num_classes=11, in_channels=4), seed=3).eval()
    flags = ["--model", "GeCA-T", "--num-classes", "11", "--in_channels", "4", "--val-mode", "final"]
    args = train.build_parser().parse_args([*flags, "--cfg-scale", "1.5", *([] if ghg else ["--no-ghg"])])
    validator = object.__new__(Validator)  # only what _sample reads: no Inception weights, no real images
    validator.args, validator.net, validator.device, validator.latent_size = args, model, torch.device("cpu"), 8
    validator.diffusion, validator.vae, validator.real_labels = create_diffusion("4"), None, torch.eye(11)[:2]
    starts, _ = record_starts(model)
    images = validator._sample(model, 0, 2, step=0)
    assert images.shape == (2, 4, 8, 8) and images.dtype == torch.uint8
    c = model.out_channels
    assert len(starts) == 4 and is_fresh_seed(starts[0], c)
    # Under GHG the hidden genes of step k are step k+1's; without it every step starts from a fresh seed.
    assert all(is_fresh_seed(s, c) for s in starts[1:]) == (not ghg)
    assert (torch.count_nonzero(starts[-1][:, c:]) > 0) == ghg
