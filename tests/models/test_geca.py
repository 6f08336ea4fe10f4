"""GeCA: reference parameter layout, initial prediction, heredity guidance, randomness, checkpointing."""

from __future__ import annotations

import pytest
import torch

from infra import rng
from models import DiT_models
from models.conditioning import guidance_combine
from tests.helpers.geca_layout import reference_layout

CLASSES, CHANNELS = 11, 4


def tiny(**kw):
    return DiT_models["GeCA-T"](input_size=8, num_classes=CLASSES, in_channels=CHANNELS, **kw)


@pytest.mark.parametrize("key,dim,mlp,hidden", [("GeCA-S", 768, 3072, 64), ("GeCA-XS", 384, 64, 32)])
def test_state_dict_equals_reference_layout(key, dim, mlp, hidden):
    with torch.device("meta"):
        model = DiT_models[key](input_size=32, num_classes=CLASSES, in_channels=CHANNELS)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == reference_layout(dim, mlp, hidden, heads=12 if key == "GeCA-S" else 6)
    assert model.is_cellular


def test_initial_prediction_is_the_seed(batch, generator):
    # docs/REFERENCE.md §4.8: zero final projection and gates -> every update is zero, the prediction equals the seed.
    model = tiny().eval()
    x, t, y = batch(2)
    seed = model.seed(x, generator=generator)
    out, cells = model(x, t, y, extras=seed, generator=generator)
    torch.testing.assert_close(out, seed[:, : 2 * CHANNELS], rtol=0, atol=0)
    torch.testing.assert_close(cells, seed, rtol=0, atol=0)


def test_train_mode_returns_full_state(batch, perturb):
    model = perturb(tiny()).train()
    x, t, y = batch(2)
    state = model(x, t, y)
    assert state.shape == (2, CHANNELS + 2 * CHANNELS + 16, 8, 8)
    torch.testing.assert_close(state[:, :CHANNELS], x, rtol=0, atol=0)  # input channels never updated


def test_seed_follows_actual_grid(batch):
    model = tiny()
    x, _, _ = batch(2, 6, 10)
    seed = model.seed(x)
    assert seed.shape == (2, 2 * CHANNELS + 16, 6, 10)
    assert torch.count_nonzero(seed[:, :, 3, 5]) > 0
    assert model.seed(x, size=4).shape[-2:] == (4, 4)
    assert model.seed(x, size=(3, 5)).shape[-2:] == (3, 5)


def test_forward_without_extras_seeds_itself(batch, perturb):
    model = perturb(tiny()).eval()
    x, t, y = batch(2)
    out, cells = model(x, t, y, generator=rng.sample_generators([1, 2]))
    gens = rng.sample_generators([1, 2])
    expected_out, expected_cells = model(x, t, y, extras=model.seed(x, generator=gens), generator=gens)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
    torch.testing.assert_close(cells, expected_cells, rtol=0, atol=0)


def test_generator_makes_forward_deterministic_and_batch_invariant(batch, perturb):
    model = perturb(tiny()).eval()
    x, t, y = batch(3)
    first = model(x, t, y, generator=rng.sample_generators([10, 11, 12]))[0]
    again = model(x, t, y, generator=rng.sample_generators([10, 11, 12]))[0]
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    alone = model(x[2:], t[2:], y[2:], generator=rng.sample_generators([12]))[0]
    torch.testing.assert_close(first[2:], alone, rtol=0, atol=1e-5)
    other = model(x, t, y, generator=rng.sample_generators([20, 21, 22]))[0]
    assert not torch.allclose(first, other)  # the seed cell and the update masks depend on the stream


def test_update_rate_one_is_deterministic(batch, perturb, generator):
    model = perturb(tiny(update_rate=1.0)).eval()
    x, t, y = batch(2)
    extras = model.seed(x, generator=generator)
    torch.manual_seed(1)
    first = model(x, t, y, extras=extras)[0]
    torch.manual_seed(2)
    second = model(x, t, y, extras=extras)[0]
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    stochastic = perturb(tiny()).eval()
    a = stochastic(x, t, y, extras=extras, generator=torch.Generator().manual_seed(1))[0]
    b = stochastic(x, t, y, extras=extras, generator=torch.Generator().manual_seed(2))[0]
    assert not torch.allclose(a, b)


def test_forward_with_cfg_gene_heredity(batch, perturb):
    model = perturb(tiny()).eval()
    x, t, y = batch(2)
    x2, t2 = torch.cat([x, torch.randn_like(x)]), torch.cat([t, t])
    y2 = torch.cat([y, torch.zeros_like(y)])
    prev = torch.randn(4, 2 * CHANNELS + 16, 8, 8)
    prev_copy = prev.clone()

    out, cells = model.forward_with_cfg(x2, t2, y2, 1.5, extras=prev, generator=rng.sample_generators([3, 4]))
    torch.testing.assert_close(prev, prev_copy, rtol=0, atol=0)  # the caller's extras are not modified
    assert out.shape == (4, 2 * CHANNELS, 8, 8) and cells.shape == prev.shape

    # Expected: output channels re-seeded with a fresh centre cell, hidden inherited, both halves see x[:N].
    gens = rng.sample_generators([3, 4])
    half = torch.cat([x, x])
    fresh = model.seed(half, generator=gens)
    start = torch.cat([fresh[:, : 2 * CHANNELS], prev[:, 2 * CHANNELS :]], dim=1)
    raw, expected_cells = model(half, t2, y2, extras=start, generator=gens)
    torch.testing.assert_close(out, guidance_combine(raw, 1.5, CHANNELS), rtol=0, atol=0)
    torch.testing.assert_close(cells, expected_cells, rtol=0, atol=0)

    # Previous output channels are irrelevant (re-seeded); previous hidden channels matter (inherited).
    changed_out = prev.clone()
    changed_out[:, : 2 * CHANNELS] += 1.0
    same = model.forward_with_cfg(x2, t2, y2, 1.5, extras=changed_out, generator=rng.sample_generators([3, 4]))[0]
    torch.testing.assert_close(same, out, rtol=0, atol=0)
    changed_hidden = prev.clone()
    changed_hidden[:, 2 * CHANNELS :] += 1.0
    differs = model.forward_with_cfg(x2, t2, y2, 1.5, extras=changed_hidden, generator=rng.sample_generators([3, 4]))
    assert not torch.allclose(differs[0], out)


def test_forward_with_cfg_without_extras_grows_from_a_fresh_seed(batch, perturb):
    # Fresh-seed sampling (--no-ghg): no extras -> output AND hidden channels start from a new seed, as in training.
    model = perturb(tiny()).eval()
    x, t, y = batch(2)
    x2, t2, y2 = torch.cat([x, torch.randn_like(x)]), torch.cat([t, t]), torch.cat([y, torch.zeros_like(y)])
    out, cells = model.forward_with_cfg(x2, t2, y2, 2.0, generator=rng.sample_generators([8, 9]))

    gens = rng.sample_generators([8, 9])
    half = torch.cat([x, x])
    start = model.seed(half, generator=gens)
    assert torch.count_nonzero(start[:, 2 * CHANNELS :]) == 0  # hidden genes of a seed are zero
    raw, expected_cells = model(half, t2, y2, extras=start, generator=gens)
    eps_c, eps_u = raw[:2, :CHANNELS], raw[2:, :CHANNELS]
    guided = eps_u + 2.0 * (eps_c - eps_u)
    torch.testing.assert_close(out[:2, :CHANNELS], guided, rtol=0, atol=0)
    torch.testing.assert_close(out[2:, :CHANNELS], guided, rtol=0, atol=0)
    torch.testing.assert_close(out[:, CHANNELS:], raw[:, CHANNELS:], rtol=0, atol=0)
    torch.testing.assert_close(cells, expected_cells, rtol=0, atol=0)
    # Inheriting any previous hidden genes changes the result; without extras nothing is inherited.
    prev = torch.randn(4, 2 * CHANNELS + 16, 8, 8, generator=torch.Generator().manual_seed(1))
    inherited = model.forward_with_cfg(x2, t2, y2, 2.0, extras=prev, generator=rng.sample_generators([8, 9]))[0]
    assert not torch.allclose(inherited, out)


def test_forward_with_cfg_guides_only_epsilon(batch, perturb):
    model = perturb(tiny(update_rate=1.0)).eval()
    x, t, y = batch(2)
    x2, t2, y2 = torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.zeros_like(y)])
    extras = model.seed(x2, generator=torch.Generator().manual_seed(0))
    guided, _ = model.forward_with_cfg(x2, t2, y2, 4.0, extras=extras, generator=torch.Generator().manual_seed(5))
    raw, _ = model(x2, t2, y2, extras=model.seed(x2, generator=torch.Generator().manual_seed(5)))
    torch.testing.assert_close(guided[:, CHANNELS:], raw[:, CHANNELS:], rtol=0, atol=0)  # variance unguided
    eps_c, eps_u = raw[:2, :CHANNELS], raw[2:, :CHANNELS]
    torch.testing.assert_close(guided[:2, :CHANNELS], eps_u + 4.0 * (eps_c - eps_u), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(guided[2:, :CHANNELS], guided[:2, :CHANNELS], rtol=0, atol=0)


def test_forward_with_cfg_non_square_grid(batch, perturb):
    model = perturb(tiny()).eval()
    x, t, y = batch(1, 6, 10)
    x2, t2, y2 = torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.zeros_like(y)])
    out, cells = model.forward_with_cfg(x2, t2, y2, 1.5, extras=torch.zeros(2, 24, 6, 10))
    assert out.shape == (2, 8, 6, 10) and cells.shape == (2, 24, 6, 10)


@pytest.mark.parametrize("rate", [0.5, 1.0])
def test_nca_checkpoint_gives_same_gradients(batch, perturb, rate):
    plain = perturb(tiny(update_rate=rate)).train()
    chk = tiny(update_rate=rate, nca_checkpoint=5).train()
    chk.load_state_dict(plain.state_dict())
    x, t, y = batch(2)
    grads = []
    for model in (plain, chk):
        state = model(x, t, y, generator=rng.sample_generators([0, 1]))
        state[:, CHANNELS:].square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert g is not None and torch.count_nonzero(g) > 0, name
        torch.testing.assert_close(grads[1][name], g, rtol=0, atol=1e-5, msg=name)


def record_dtypes(modules: dict[str, torch.nn.Module]) -> tuple[dict[str, set], list]:
    """Forward hooks recording the dtype of each module's first input and of its output, per name."""
    seen: dict[str, set] = {}
    handles = []
    for name, module in modules.items():

        def hook(_module, inputs, output, name=name):
            seen.setdefault(f"{name} in", set()).add(inputs[0].dtype)
            seen.setdefault(f"{name} out", set()).add(output.dtype)

        handles.append(module.register_forward_hook(hook))
    return seen, handles


@pytest.mark.parametrize("training", [True, False])
def test_bf16_autocast_keeps_the_token_stream_float32(batch, perturb, training):
    # The reference adds a float32 position table to the cell embedding, so under fp16/bf16 autocast the tokens and
    # the residual stream of the transformer are float32 while its linear layers compute in half precision.
    model = perturb(tiny()).train(training)
    attn = model.transformer.layers[0][0]
    seen, handles = record_dtypes(
        {"embed": model.cell_to_embedding, "transformer": model.transformer, "attn": attn, "final": model.final_layer}
    )
    x, t, y = batch(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = model(x, t, y, generator=rng.sample_generators([1, 2]))
    for h in handles:
        h.remove()
    assert seen["embed out"] == {torch.bfloat16}  # autocast is on inside the forward
    assert seen["attn out"] == {torch.bfloat16}
    assert seen["transformer in"] == seen["transformer out"] == {torch.float32}  # promoted by the float32 table
    assert seen["final in"] == {torch.float32}
    state = result if training else result[1]
    assert state.dtype == torch.float32


def test_position_table_follows_the_weights_dtype(batch, perturb):
    # Without autocast the table takes the model's dtype: a float64 model stays float64 throughout.
    model = perturb(tiny()).double().eval()
    seen, handles = record_dtypes({"transformer": model.transformer})
    x, t, y = batch(2)
    out, cells = model(x.double(), t, y.double(), generator=rng.sample_generators([1, 2]))
    for h in handles:
        h.remove()
    assert seen["transformer in"] == seen["transformer out"] == {torch.float64}
    assert out.dtype == cells.dtype == torch.float64
