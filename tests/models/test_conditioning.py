"""Shared conditioning layers: timestep features, per-entry label dropout, CFG combination."""

from __future__ import annotations

import math

import torch
from torch import nn

from models.conditioning import LabelEmbedder, drop_label_entries, guidance_combine, timestep_embedding


def test_timestep_embedding_closed_form():
    # docs/REFERENCE.md §4.4: f_i = exp(-ln(10000) i / 128), features [cos(t f_i), sin(t f_i)], cosines first.
    emb = timestep_embedding(torch.tensor([0, 7, 999]), 256)
    assert emb.shape == (3, 256)
    for row, t in enumerate([0, 7, 999]):
        for i in (0, 1, 64, 127):
            f = math.exp(-math.log(10000) * i / 128)
            assert abs(emb[row, i].item() - math.cos(t * f)) < 1e-4
            assert abs(emb[row, 128 + i].item() - math.sin(t * f)) < 1e-4


def test_label_dropout_is_per_entry(generator):
    y = torch.ones(2000, 11)
    dropped = drop_label_entries(y, 0.1, generator)
    # 22,000 Bernoulli(0.1) entries: std of the fraction 0.002, tolerance 5 sigma.
    assert abs((dropped == 0).float().mean().item() - 0.1) < 0.01
    zeros_per_row = (dropped == 0).sum(1)
    assert ((zeros_per_row > 0) & (zeros_per_row < 11)).any()  # rows are partly dropped, not whole vectors


def identity_label_embedder() -> LabelEmbedder:
    """Embedder whose two Linear layers are identities, so its output shows the dropped labels."""
    emb = LabelEmbedder(11, 11, 0.1)
    with torch.no_grad():
        for linear in emb.embedding_table:
            linear.weight.copy_(torch.eye(11))
            linear.bias.zero_()
    return emb


def test_label_dropout_only_in_training(generator):
    emb = identity_label_embedder()
    y = torch.ones(2000, 11)
    emb.train()
    assert abs((emb(y, generator) == 0).float().mean().item() - 0.1) < 0.01
    emb.eval()
    torch.testing.assert_close(emb(y, generator), y, rtol=0, atol=0)


def test_label_embedder_is_two_linears_without_nonlinearity():
    emb = LabelEmbedder(11, 32, 0.1)
    assert [type(m) for m in emb.embedding_table] == [nn.Linear, nn.Linear]


def test_guidance_combine():
    out = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(2, 8, 3)
    guided = guidance_combine(out, 2.0, 4)
    cond, uncond = out[:1, :4], out[1:, :4]
    expected_eps = uncond + 2.0 * (cond - uncond)
    torch.testing.assert_close(guided[:, :4], torch.cat([expected_eps, expected_eps]))
    torch.testing.assert_close(guided[:, 4:], out[:, 4:], rtol=0, atol=0)
