"""Performance options (issue 9): autocast and torch.compile in training and sampling, host syncs, `python -m bench`.

Tolerances are relative L2 errors against float32 eager on tiny randomly perturbed models. Measured on this project's
CPU: one guided call of GeCA-T or DiT-T/2 is off by ~0.5% under bf16 autocast and ~0.07% under fp16 (bf16 keeps 8
mantissa bits, fp16 11); a 4-step guided sampling run by ~0.3% and ~0.04%; the training loss by ~0.1% and ~0.02%,
its gradients by ~0.45% and ~0.06%. The bounds below leave a margin of about 5x.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sample_ddp
import train
from diffusion import create_diffusion
from infra import rng
from infra.host_syncs import count_host_syncs
from models import DiT_models
from synthesis.cli import configure_model_call

MODELS = ["GeCA-T", "DiT-T/2"]
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}
CALL_TOL = {"bf16": 3e-2, "fp16": 4e-3}
SAMPLE_TOL = {"bf16": 2e-2, "fp16": 3e-3}
LOSS_TOL = {"bf16": 1e-2, "fp16": 2e-3}
GRAD_TOL = {"bf16": 3e-2, "fp16": 5e-3}


# Tiny ops are dominated by thread wake-ups on a shared CPU.
pytestmark = pytest.mark.one_thread


def tiny(key: str, scale: float = 0.02) -> torch.nn.Module:
    """A tiny model with seeded weights moved off their (partly zero) initialisation; the same for every call."""
    torch.manual_seed(0)
    model = DiT_models[key](input_size=8, num_classes=11, in_channels=4)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b).norm() / b.norm()).item()


def guided_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([999, 500, 999, 500])
    y = torch.zeros(4, 11)
    y[0, 1] = y[1, 5] = 1
    return x, t, y


def guided_sample(model: torch.nn.Module, steps: int = 4) -> torch.Tensor:
    """Latents of two images by guided ancestral sampling (float32 out of the loop)."""
    gens = rng.sample_generators([0, 1])
    z = rng.randn((2, 4, 8, 8), gens)
    z = torch.cat([z, z])
    y = torch.zeros(4, 11)
    y[0, 0] = y[1, 3] = 1
    kwargs = {"y": y, "cfg_scale": 1.5}
    if model.is_cellular:
        kwargs["extras"] = model.seed(z, generator=gens)
    loop = create_diffusion(str(steps)).p_sample_loop
    with torch.no_grad():
        return loop(model.forward_with_cfg, z.shape, noise=z, model_kwargs=kwargs, generator=gens)[:2]


def training_loss_and_grads(model: torch.nn.Module, dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample training losses and the flattened gradient of their mean, optionally under CPU autocast."""
    model.train().zero_grad(set_to_none=True)
    x, _, y = guided_inputs()
    t = torch.tensor([10, 300, 600, 999])
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = create_diffusion("").training_losses(model, x, t, {"y": y}, generator=rng.sample_generators(range(4)))
    loss["loss"].mean().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return loss["loss"].detach(), grads


def test_flags_parse_with_float32_eager_defaults():
    train_args = train.build_parser().parse_args([])
    assert not train_args.compile and train_args.mixed_precision == "no"
    assert train.build_parser().parse_args(["--compile", "--mixed-precision", "bf16"]).compile
    sample_args = sample_ddp.build_parser().parse_args(["--data-path", "x"])
    assert not sample_args.compile and sample_args.mixed_precision == "no"
    parsed = sample_ddp.build_parser().parse_args(["--data-path", "x", "--compile", "--mixed-precision", "fp16"])
    assert parsed.compile and parsed.mixed_precision == "fp16"


def test_configure_model_call_without_options_keeps_the_model_untouched():
    model = tiny("GeCA-T")
    assert configure_model_call(model, "cpu") is model
    assert "forward" not in vars(model)


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("key", MODELS)
def test_autocast_guided_call_within_tolerance(key, precision):
    x, t, y = guided_inputs()
    reference, model = tiny(key).eval(), configure_model_call(tiny(key).eval(), "cpu", precision)
    extras = reference.seed(x, generator=rng.sample_generators([0, 1])) if reference.is_cellular else None
    with torch.no_grad():
        expected = reference.forward_with_cfg(x, t, y, 1.5, extras=extras, generator=rng.sample_generators([0, 1]))
        got = model.forward_with_cfg(x, t, y, 1.5, extras=extras, generator=rng.sample_generators([0, 1]))
    if reference.is_cellular:
        assert got[0].dtype == got[1].dtype == torch.float32  # the carried cell state stays float32
        assert rel_err(got[1], expected[1]) < CALL_TOL[precision]
        got, expected = got[0], expected[0]
    assert got.dtype == torch.float32
    assert rel_err(got, expected) < CALL_TOL[precision]


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("key", MODELS)
def test_autocast_sampling_run_within_tolerance(key, precision):
    expected = guided_sample(tiny(key).eval())
    got = guided_sample(configure_model_call(tiny(key).eval(), "cpu", precision))
    assert got.dtype == torch.float32
    assert rel_err(got, expected) < SAMPLE_TOL[precision]


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("key", MODELS)
def test_training_autocast_within_tolerance(key, precision):
    # train.py's --mixed-precision enters accelerate's autocast, which on CPU is this torch.autocast (bf16; accelerate
    # runs fp16 on CPU as float32). The test calls torch.autocast directly: accelerate's state is process-wide.
    loss, grads = training_loss_and_grads(tiny(key), None)
    loss_amp, grads_amp = training_loss_and_grads(tiny(key), PRECISIONS[precision])
    assert rel_err(loss_amp, loss) < LOSS_TOL[precision]
    assert rel_err(grads_amp, grads) < GRAD_TOL[precision]


def test_sampling_loop_makes_no_host_syncs():
    with count_host_syncs() as counts:
        torch.ones(2).sum().item()  # the counter sees Python-level syncs
    assert counts["item"] == 1
    model = tiny("GeCA-T").eval()
    with count_host_syncs() as counts:
        guided_sample(model, steps=3)  # the seed, the guided GHG loop and its noise draws
    assert sum(counts.values()) == 0, counts


def test_bench_quick_run_prints_one_table(tmp_path):
    # `python -m bench` as a user runs it, in a fresh process.
    out = tmp_path / "table.md"
    command = [sys.executable, "-m", "bench", "--quick", "--sections", "attention", "step", "--output", str(out)]
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True)
    table = done.stdout.strip()
    assert out.read_text().strip() == table
    assert "grid_local_attention" in table and "dense layers alone" in table and "load average" in table


@pytest.mark.slow
@pytest.mark.parametrize("key", MODELS)
def test_compiled_sampling_equals_eager(key):
    # Compiles in ~10-20 s per model on this CPU (inductor's C++ backend, gcc), hence slow.
    expected = guided_sample(tiny(key).eval(), steps=2)
    got = guided_sample(configure_model_call(tiny(key).eval(), "cpu", use_compile=True), steps=2)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * max(1.0, expected.abs().max().item()))


@pytest.mark.slow
def test_compiled_training_equals_eager():
    loss, grads = training_loss_and_grads(tiny("GeCA-T"), None)
    model = tiny("GeCA-T")
    compiled = torch.compile(model)  # as train.py --compile
    model.train().zero_grad(set_to_none=True)
    x, _, y = guided_inputs()
    t = torch.tensor([10, 300, 600, 999])
    got = create_diffusion("").training_losses(compiled, x, t, {"y": y}, generator=rng.sample_generators(range(4)))
    got["loss"].mean().backward()
    got_grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(got["loss"].detach(), loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grads, grads, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_cuda_sampling_loop_never_waits_for_the_device():
    model = tiny("GeCA-T").cuda().eval()
    gens = rng.sample_generators([0, 1], "cuda")
    z = torch.cat([rng.randn((2, 4, 8, 8), gens, "cuda")] * 2)
    kwargs = {"y": torch.zeros(4, 11, device="cuda"), "cfg_scale": 1.5, "extras": model.seed(z, generator=gens)}
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            create_diffusion("3").p_sample_loop(
                model.forward_with_cfg, z.shape, noise=z, model_kwargs=kwargs, generator=gens
            )
    finally:
        torch.cuda.set_sync_debug_mode("default")
