"""Feature Likelihood Divergence and its generalization gap "GG" (docs/PAPER.md §B3, docs/REFERENCE.md §9.3),
re-implemented.

Jiralerspong et al., "Feature Likelihood Divergence: Evaluating the Generalization of Generative Models Using
Samples" (NeurIPS 2023), as coded in the `fld` package at ffbbf20: an isotropic Gaussian mixture is centred on the
generated features, its per-component log-variances are fitted by Adam to the train features (with an auxiliary
"origin" component), and the dimension-normalised negative log-likelihoods of train and test features are compared.
GG = 100 · (NLL(train) − NLL(test)); strongly negative values mean the generated set copies training images.

Every random choice (generated-set subsample, train shuffles) comes from the caller's generator; the reference used
NumPy's unseeded global RNG. Log-variances are clamped to [−40, 40] after every step, as fld's HEAD does (its older
releases, and docs/REFERENCE.md §9.3's summary, say [−40, 20]).
"""

from __future__ import annotations

import math

import torch

GEN_SIZE = 10_000  # generated features kept (random subset beyond this)
LR = 0.5
NUM_EPOCHS = 50
BATCH_SIZE = 10_000
ORIGIN_DIST_PROP = 0.1  # the origin component sees distances shrunk by (1 - 0.1)²
LOG_VAR_CLAMP = (-40.0, 40.0)
EARLY_STOP_TOL = 5e-4
EARLY_STOP_WINDOW = 5
EARLY_STOP_AFTER = 5  # the rule applies from epoch index 6 on
CACHE_LIMIT = 250_000  # fld caches all train-to-centre distances below this many train points
NLL_CHUNK = 10_000  # rows per block when scoring large sets


def standardize(
    train: torch.Tensor, test: torch.Tensor, gen: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardise all three sets per dimension with the test set's mean and unbiased standard deviation.

    A dimension that is constant over the test set (std 0, e.g. an Inception channel that is zero for every image
    of a small or uniform set) is centred but not scaled. fld divides by the zero and the gap becomes NaN; this is
    the one deviation from it, and it leaves every other dimension as fld computes it.

    Args:
        train: (N_T, D). test: (N_H, D). gen: (N_G, D).

    Returns:
        The three standardised sets, same shapes.
    """
    mean, std = test.mean(dim=0), test.std(dim=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std, (gen - mean) / std


def squared_distances(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N, M) squared Euclidean distances, computed as fld does (`cdist(...) ** 2`), without gradient."""
    return (torch.cdist(x, centres) ** 2).detach()


def component_log_likelihoods(dists: torch.Tensor, log_vars: torch.Tensor, dim: int) -> torch.Tensor:
    """log N(x_i; mu_j, exp(s_j) I) from squared distances.

    Args:
        dists: (N, M) squared distances ‖x_i − mu_j‖².
        log_vars: (M,) log-variances s_j (or a scalar for one component).
        dim: feature dimension d.

    Returns:
        (N, M) log-densities −‖x − mu‖²/(2 e^s) − (d/2) s − (d/2) log 2π.
    """
    return -0.5 * dists / torch.exp(log_vars) - 0.5 * dim * log_vars - 0.5 * dim * math.log(2 * math.pi)


def mixture_log_likelihood(pairwise: torch.Tensor, origin: torch.Tensor | None = None) -> torch.Tensor:
    """log p(x) of the equal-weight mixture, optionally with the origin component at weight 1.

    Args:
        pairwise: (N, M) component log-densities.
        origin: (N, 1) origin-component log-densities, or None.

    Returns:
        (N,) log-likelihoods logsumexp_j [pairwise_ij − log M] (with the origin term appended when given).
    """
    terms = pairwise - math.log(pairwise.shape[1])
    if origin is not None:
        terms = torch.cat([terms, origin], dim=1)
    return torch.logsumexp(terms, dim=1)


def _min_squared_distances(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(M,) smallest squared distance from each centre to any row of x, in blocks of x."""
    block_mins = [squared_distances(block, centres).min(dim=0).values for block in x.split(NLL_CHUNK)]
    return torch.stack(block_mins).min(dim=0).values


def fit_log_variances(
    centres: torch.Tensor,
    train: torch.Tensor,
    generator: torch.Generator | None = None,
    lr: float = LR,
    num_epochs: int = NUM_EPOCHS,
    batch_size: int = BATCH_SIZE,
    cache_distances: bool | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Fit the mixture's per-component log-variances to maximise the likelihood of the train features
    (docs/PAPER.md §B3).

    The train set is shuffled once; s_j starts at log((min_i ‖t_i − mu_j‖² + 1e-3)/d); an origin component centred
    at the train mean (distances × 0.81, weight 1, log-variance from 0, learnable) joins the mixture during fitting;
    Adam minimises −mean log p(t)/d over mini-batches; s is clamped after every step; after epoch index 5 training
    stops once the epoch loss is within 5e-4 of each of the last 5 epoch losses (itself included).

    Args:
        centres: (M, D) component means (the generated features).
        train: (N_T, D) features to fit.
        generator: CPU generator of the shuffle.
        lr, num_epochs, batch_size: optimiser settings (reference 0.5, 50, 10,000).
        cache_distances: keep all train-to-centre distances in memory; None does so below 250,000 train points.

    Returns:
        ((M,) fitted log-variances, detached; the mean loss of every epoch run).
    """
    dim = centres.shape[1]
    train = train[torch.randperm(train.shape[0], generator=generator).to(train.device)]
    if cache_distances is None:
        cache_distances = train.shape[0] < CACHE_LIMIT
    cached = squared_distances(train, centres) if cache_distances else None
    min_dists = cached.min(dim=0).values if cached is not None else _min_squared_distances(train, centres)
    log_vars = ((min_dists + 1e-3) / dim).log().requires_grad_(True)
    origin_log_var = torch.zeros((), dtype=centres.dtype, device=centres.device, requires_grad=True)
    origin_dists = (1 - ORIGIN_DIST_PROP) ** 2 * squared_distances(train, train.mean(dim=0, keepdim=True))  # (N_T, 1)
    optim = torch.optim.Adam([log_vars, origin_log_var], lr=lr)
    losses: list[float] = []
    with torch.enable_grad():
        for epoch in range(num_epochs):
            epoch_losses = []
            for start in range(0, train.shape[0], batch_size):
                stop = start + batch_size
                dists = cached[start:stop] if cached is not None else squared_distances(train[start:stop], centres)
                optim.zero_grad()
                pairwise = component_log_likelihoods(dists, log_vars, dim)
                origin = component_log_likelihoods(origin_dists[start:stop], origin_log_var, dim)
                loss = -mixture_log_likelihood(pairwise, origin).mean() / dim
                loss.backward()
                optim.step()
                # fld clamps to avoid NaNs when a generated point coincides with a train point.
                with torch.no_grad():
                    log_vars.clamp_(*LOG_VAR_CLAMP)
                epoch_losses.append(loss.item())
            losses.append(sum(epoch_losses) / len(epoch_losses))
            if epoch > EARLY_STOP_AFTER:
                recent = losses[-EARLY_STOP_WINDOW:]
                if max(abs(losses[-1] - value) for value in recent) < EARLY_STOP_TOL:
                    break
    return log_vars.detach(), losses


def dim_adjusted_nll(x: torch.Tensor, centres: torch.Tensor, log_vars: torch.Tensor) -> torch.Tensor:
    """−log p(x)/d under the equal-weight mixture of the given components (no origin component).

    Args:
        x: (N, D) points.
        centres: (M, D) component means.
        log_vars: (M,) log-variances.

    Returns:
        (N,) dimension-normalised negative log-likelihoods.
    """
    dim = centres.shape[1]
    lls = [
        mixture_log_likelihood(component_log_likelihoods(squared_distances(block, centres), log_vars, dim))
        for block in x.split(NLL_CHUNK)
    ]
    return -torch.cat(lls) / dim


def _subsample(feats: torch.Tensor, size: int, generator: torch.Generator | None) -> torch.Tensor:
    if feats.shape[0] <= size:
        return feats
    return feats[torch.randperm(feats.shape[0], generator=generator)[:size].to(feats.device)]


def generalization_gap(
    train: torch.Tensor,
    test: torch.Tensor,
    gen: torch.Tensor,
    generator: torch.Generator | None = None,
    gen_size: int = GEN_SIZE,
) -> float:
    """GG = 100 · (mean NLL(train) − mean NLL(test)) under the mixture centred on the generated features (fld "gap").

    Runs on the device of the inputs. Random draws, in order: the generated subsample (only beyond `gen_size`),
    then the train shuffle of the fit.

    Args:
        train: (N_T, D) real training features.
        test: (N_H, D) real held-out features (at least 2, for the standard deviation).
        gen: (N_G, D) generated features.
        generator: CPU generator.
        gen_size: generated features kept (reference 10,000).

    Returns:
        The gap; ≥ 0 means no detectable memorisation, strongly negative (fld warns below −1000) means copying.
    """
    gen = _subsample(gen, gen_size, generator)
    train, test, gen = standardize(train, test, gen)
    log_vars, _ = fit_log_variances(gen, train, generator)
    nll_train = dim_adjusted_nll(train, gen, log_vars).mean().item()
    nll_test = dim_adjusted_nll(test, gen, log_vars).mean().item()
    return 100 * (nll_train - nll_test)


def fld_score(
    train: torch.Tensor,
    test: torch.Tensor,
    gen: torch.Tensor,
    generator: torch.Generator | None = None,
    gen_size: int = GEN_SIZE,
) -> float:
    """FLD (fld's default `eval_feat="test"`): 100 · (NLL(test) − NLL_base), lower is better (0 ≈ as good as train).

    NLL_base is the test NLL under a mixture centred on a random min(N_G, N_T // 2) train points and fitted on the
    remaining train points. Random draws, in order: generated subsample, fit shuffle, baseline split, baseline fit
    shuffle.

    Args:
        train, test, gen: (N, D) feature sets as in `generalization_gap`.
        generator: CPU generator.
        gen_size: generated features kept.

    Returns:
        The FLD value.
    """
    gen = _subsample(gen, gen_size, generator)
    train, test, gen = standardize(train, test, gen)
    log_vars, _ = fit_log_variances(gen, train, generator)
    nll_test = dim_adjusted_nll(test, gen, log_vars).mean().item()
    # fld re-standardises the already standardised sets with the test statistics before the baseline; kept.
    train, test, _ = standardize(train, test, train)
    train = train[torch.randperm(train.shape[0], generator=generator).to(train.device)]
    split = min(gen.shape[0], train.shape[0] // 2)
    base_log_vars, _ = fit_log_variances(train[:split], train[split:], generator)
    nll_base = dim_adjusted_nll(test, train[:split], base_log_vars).mean().item()
    return 100 * (nll_test - nll_base)
