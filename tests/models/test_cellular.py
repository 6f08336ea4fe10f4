"""GeCA's cellular helpers: exact local attention, seed, 1-D position table, update masks."""

from __future__ import annotations

import math

import pytest
import torch

from infra import rng
from models.cellular import (
    NEIGHBOUR_OFFSETS,
    impulse_gather,
    impulse_local_attention,
    local_attention,
    seed_cells,
    sinusoidal_table_1d,
    update_masks,
)


def naive_local_attention(q, k, v, height, width, scale):
    """Per-cell loop: 9 neighbours row-major over offsets, zero vectors outside the grid
    (docs/REFERENCE.md §4.5.5, §6)."""
    n, heads, _, dim = q.shape
    out = torch.zeros_like(q)
    zero = torch.zeros(dim, dtype=q.dtype)
    for b in range(n):
        for h in range(heads):
            for row in range(height):
                for col in range(width):
                    keys, values = [], []
                    for dr in (-1, 0, 1):
                        for dc in (-1, 0, 1):
                            r, c = row + dr, col + dc
                            inside = 0 <= r < height and 0 <= c < width
                            keys.append(k[b, h, r * width + c] if inside else zero)
                            values.append(v[b, h, r * width + c] if inside else zero)
                    logits = torch.stack(keys) @ q[b, h, row * width + col] * scale  # (9,)
                    weights = torch.softmax(logits, dim=0)
                    out[b, h, row * width + col] = weights @ torch.stack(values)
    return out


@pytest.mark.parametrize("height,width", [(4, 4), (3, 5), (6, 2)])
def test_local_attention_matches_per_cell_loop(generator, height, width):
    q, k, v = (torch.randn(2, 3, height * width, 8, generator=generator) for _ in range(3))
    expected = naive_local_attention(q, k, v, height, width, 8**-0.5)
    got = local_attention(q, k, v, height, width)
    assert (got - expected).abs().max() < 1e-5


@pytest.mark.parametrize("height,width", [(3, 4), (1, 1), (2, 5)])
def test_impulse_reference_attention_matches_per_cell_loop(generator, height, width):
    # The readable reference the fast implementations are checked against is itself checked against the loop.
    qkv = torch.randn(2, height, width, 3, 2, 4, generator=generator)
    q, k, v = (t.reshape(2, height * width, 2, 4).transpose(1, 2) for t in qkv.unbind(3))  # (N, heads, T, d)
    expected = naive_local_attention(q, k, v, height, width, 0.7)  # (N, heads, T, d)
    got = impulse_local_attention(qkv, 0.7)  # (N, H, W, heads, d)
    torch.testing.assert_close(got, expected.transpose(1, 2).reshape(2, height, width, 2, 4), rtol=0, atol=1e-5)


def test_impulse_gather_entry_k_is_the_neighbour_at_offset_k():
    height, width = 3, 4
    x = torch.arange(1.0, height * width + 1).view(1, 1, height * width, 1)  # token value = its index + 1
    gathered = impulse_gather(x, height, width)[0, 0, :, :, 0]  # (T, 9)
    for row in range(height):
        for col in range(width):
            for slot, (dr, dc) in enumerate(NEIGHBOUR_OFFSETS):
                r, c = row + dr, col + dc
                expected = r * width + c + 1.0 if 0 <= r < height and 0 <= c < width else 0.0
                assert gathered[row * width + col, slot].item() == expected


def test_local_attention_zero_padding_takes_part_in_softmax():
    # A corner cell of a 1x1 grid has 8 zero neighbours with logit 0: weight of itself is e^s / (e^s + 8).
    q = torch.ones(1, 1, 1, 4)
    k = torch.ones(1, 1, 1, 4)
    v = torch.full((1, 1, 1, 4), 3.0)
    got = local_attention(q, k, v, 1, 1, scale=0.5)
    w_self = math.exp(2.0) / (math.exp(2.0) + 8)  # logit q.k * scale = 4 * 0.5 = 2
    torch.testing.assert_close(got, torch.full_like(v, 3.0 * w_self))


def test_local_attention_accepts_strided_views(generator):
    # The model passes q, k, v as permuted views of one qkv tensor.
    qkv = torch.randn(2, 12, 3, 2, 4, generator=generator).permute(2, 0, 3, 1, 4)  # (3, N, heads, T, d)
    expected = naive_local_attention(*(t.contiguous() for t in qkv), 3, 4, 0.5)
    assert (local_attention(qkv[0], qkv[1], qkv[2], 3, 4) - expected).abs().max() < 1e-5


def test_local_attention_rejects_wrong_grid():
    q = torch.zeros(1, 1, 10, 4)
    with pytest.raises(ValueError, match="3x4 grid"):
        local_attention(q, q, q, 3, 4)


def test_seed_single_centre_cell(generator):
    cells = seed_cells(3, 8, 24, 6, 9, generator)
    assert cells.shape == (3, 24, 6, 9)
    centre = cells[:, :, 3, 4]  # (H // 2, W // 2)
    assert torch.count_nonzero(centre[:, 8:]) == 0  # hidden channels zero
    assert torch.count_nonzero(centre[:, :8]) == 24  # output channels drawn
    rest = cells.clone()
    rest[:, :, 3, 4] = 0
    assert torch.count_nonzero(rest) == 0
    assert not torch.equal(centre[0, :8], centre[1, :8])  # fresh per sample


def test_seed_per_sample_generators_batch_invariant():
    batch = seed_cells(3, 8, 10, 5, 5, rng.sample_generators([7, 8, 9]))
    alone = seed_cells(1, 8, 10, 5, 5, rng.sample_generators([9]))
    torch.testing.assert_close(batch[2:], alone, rtol=0, atol=0)


def test_sinusoidal_table_values():
    # Closed form of docs/REFERENCE.md §4.5.3: even j sin(n 10000^(-j/D)), odd j cos(n 10000^(-j/D)) (odd exponent
    # quirk).
    table = sinusoidal_table_1d(20, 16)
    assert table.shape == (20, 16)
    for n, j in [(0, 0), (0, 1), (5, 2), (5, 3), (19, 15), (7, 8)]:
        angle = n * 10000 ** (-j / 16)
        expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
        assert abs(table[n, j].item() - expected) < 1e-5


def test_update_masks_rate_and_shape(generator):
    masks = update_masks(4, 12, 16, 16, 0.5, generator)
    assert masks.shape == (4, 12, 16, 16)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    # 12,288 Bernoulli(0.5) draws: std of the mean is 0.0045, tolerance about 4.5 sigma.
    assert abs(masks.mean().item() - 0.5) < 0.02
    assert abs(update_masks(4, 12, 16, 16, 0.25, generator).mean().item() - 0.25) < 0.02
