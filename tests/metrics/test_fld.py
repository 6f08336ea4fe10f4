"""FLD generalization gap (docs/PAPER.md §B3): against a plain re-derivation in the test, and on synthetic Gaussians."""

from __future__ import annotations

import math

import pytest
import torch

from metrics.fld import fit_log_variances, fld_score, generalization_gap


def ref_fit(centres: torch.Tensor, train: torch.Tensor, g: torch.Generator, batch: int = 10_000) -> torch.Tensor:
    """docs/PAPER.md §B3 "Bandwidth fitting", written out directly: explicit distances, explicit mixture terms."""
    m, d = centres.shape
    train = train[torch.randperm(len(train), generator=g)]
    dist = ((train[:, None, :] - centres[None, :, :]) ** 2).sum(-1)  # (N_T, M)
    s = torch.log((dist.min(dim=0).values + 1e-3) / d).requires_grad_()
    s0 = torch.zeros((), dtype=train.dtype, requires_grad=True)
    dist0 = 0.81 * ((train - train.mean(dim=0)) ** 2).sum(-1, keepdim=True)  # origin component, (N_T, 1)
    opt = torch.optim.Adam([s, s0], lr=0.5)
    history = []
    for epoch in range(50):
        losses = []
        for lo in range(0, len(train), batch):
            opt.zero_grad()
            gauss = -dist[lo : lo + batch] / (2 * s.exp()) - d / 2 * s - d / 2 * math.log(2 * math.pi) - math.log(m)
            origin = -dist0[lo : lo + batch] / (2 * s0.exp()) - d / 2 * s0 - d / 2 * math.log(2 * math.pi)
            loss = -torch.logsumexp(torch.cat([gauss, origin], dim=1), dim=1).mean() / d
            loss.backward()
            opt.step()
            with torch.no_grad():
                s.clamp_(-40, 40)
            losses.append(loss.item())
        history.append(sum(losses) / len(losses))
        if epoch > 5 and all(abs(history[-1] - h) < 5e-4 for h in history[-5:]):
            break
    return s.detach()


def ref_nll(x: torch.Tensor, centres: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    m, d = centres.shape
    dist = ((x[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    terms = -dist / (2 * s.exp()) - d / 2 * s - d / 2 * math.log(2 * math.pi) - math.log(m)
    return -torch.logsumexp(terms, dim=1) / d


def ref_gap(train: torch.Tensor, test: torch.Tensor, gen: torch.Tensor, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    mu, sd = test.mean(0), test.std(0)
    train, test, gen = (train - mu) / sd, (test - mu) / sd, (gen - mu) / sd
    s = ref_fit(gen, train, g)
    return 100 * (ref_nll(train, gen, s).mean() - ref_nll(test, gen, s).mean()).item()


def gaussian_sets(generator: torch.Generator, n_train=40, n_test=30, n_gen=20, d=8, dtype=torch.float64):
    def draw(n):
        return torch.randn(n, d, generator=generator, dtype=dtype)

    return draw(n_train), draw(n_test), draw(n_gen)


def test_gap_matches_plain_reimplementation(generator):
    train, test, gen = gaussian_sets(generator)
    ours = generalization_gap(train, test, gen, torch.Generator().manual_seed(5))
    ref = ref_gap(train, test, gen, seed=5)
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_minibatch_fit_matches_plain_reimplementation(generator):
    train, _, gen = gaussian_sets(generator)
    ours, losses = fit_log_variances(gen, train, torch.Generator().manual_seed(1), batch_size=16)
    ref = ref_fit(gen, train, torch.Generator().manual_seed(1), batch=16)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    assert 7 <= len(losses) <= 50


def test_uncached_distances_give_the_same_fit(generator):
    train, _, gen = gaussian_sets(generator)
    cached, _ = fit_log_variances(gen, train, torch.Generator().manual_seed(2), batch_size=16, cache_distances=True)
    fresh, _ = fit_log_variances(gen, train, torch.Generator().manual_seed(2), batch_size=16, cache_distances=False)
    torch.testing.assert_close(cached, fresh)


def test_copied_training_set_gives_strongly_negative_gap(generator):
    train, test, _ = gaussian_sets(generator, n_train=60, n_test=60, d=16)
    gap = generalization_gap(train, test, train.clone(), torch.Generator().manual_seed(0))
    assert gap < -1000  # fld's own "memorized" warning threshold


def test_held_out_samples_give_gap_near_zero(generator):
    train, test, gen = gaussian_sets(generator, n_train=300, n_test=300, n_gen=300, d=16)
    gap = generalization_gap(train, test, gen, torch.Generator().manual_seed(0))
    copied = generalization_gap(train, test, train.clone(), torch.Generator().manual_seed(0))
    # Fresh samples: train and test are equally far from the centres (sampling noise of a few units here).
    assert abs(gap) < 10
    assert abs(copied) > 100 * abs(gap)


def test_gap_is_seeded_and_subsamples_generated_set(generator):
    train, test, gen = gaussian_sets(generator, n_gen=30)
    runs = [generalization_gap(train, test, gen, torch.Generator().manual_seed(s), gen_size=10) for s in (0, 0, 1)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]  # a different subsample of 10 generated points


def test_fld_score_is_finite_and_lower_for_fresh_samples_than_for_noise(generator):
    train, test, gen = gaussian_sets(generator, n_train=80, n_test=60, n_gen=40)
    fresh = fld_score(train, test, gen, torch.Generator().manual_seed(0))
    spread = fld_score(train, test, 3 * gen, torch.Generator().manual_seed(0))
    assert math.isfinite(fresh)
    assert fresh < spread


def test_dimension_constant_over_test_set_is_centred_not_scaled():
    from metrics.fld import generalization_gap, standardize

    g = torch.Generator().manual_seed(3)
    train, test, gen = (torch.randn(n, 6, generator=g, dtype=torch.float64) for n in (40, 30, 20))
    for t in (train, test, gen):
        t[:, 2] = 0.0  # a channel that is zero for every image
    train[:5, 2] = 1.5  # ... except for a few training images
    s_train, s_test, _ = standardize(train, test, gen)
    # Column 2 is only centred (test mean 0, no scaling); the other columns are standardised as fld does.
    torch.testing.assert_close(s_train[:, 2], train[:, 2])
    torch.testing.assert_close(s_test[:, [0, 1]], (test[:, [0, 1]] - test[:, [0, 1]].mean(0)) / test[:, [0, 1]].std(0))
    assert torch.isfinite(torch.tensor(generalization_gap(train, test, gen, torch.Generator().manual_seed(0))))
