"""KID (docs/REFERENCE.md §9.1): formula against NumPy, subset draws and statistics against torchmetrics, behaviour on
Gaussians; the z-test of KID differences pooled over folds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.image.kid import KernelInceptionDistance

from metrics.kid import kid, kid_difference, kid_standard_error, mmd2_unbiased, polynomial_kernel
from training.selection import Validation, within_noise


def numpy_kid(real: np.ndarray, fake: np.ndarray, subsets: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Independent float64 KID: explicit double sums over each subset (Binkowski et al. 2018, eq. 4)."""
    d = real.shape[1]
    values = []
    for real_idx, fake_idx in subsets:
        x, y = real[real_idx], fake[fake_idx]
        m = len(x)
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        off = ~np.eye(m, dtype=bool)
        values.append(kxx[off].sum() / (m * (m - 1)) + kyy[off].sum() / (m * (m - 1)) - 2 * kxy.sum() / m**2)
    return float(np.mean(values)), float(np.std(values))


def torch_subsets(n_real: int, n_fake: int, subsets: int, size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The draws `kid` and torchmetrics make: per subset, randperm(real) then randperm(fake)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(subsets):
        r = torch.randperm(n_real, generator=g)[:size].numpy()
        f = torch.randperm(n_fake, generator=g)[:size].numpy()
        out.append((r, f))
    return out


def test_polynomial_kernel_closed_form():
    a = torch.tensor([[1.0, 2.0]])
    b = torch.tensor([[3.0, -1.0], [0.0, 0.0]])
    # (a.b / 2 + 1)^3: a.b = 1 -> 1.5^3; a.0 = 0 -> 1.
    torch.testing.assert_close(polynomial_kernel(a, b), torch.tensor([[3.375, 1.0]]))


def test_mmd2_unbiased_of_known_matrices():
    kxx = torch.tensor([[9.0, 1.0], [3.0, 9.0]])
    kyy = torch.tensor([[9.0, 2.0], [2.0, 9.0]])
    kxy = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    # Off-diagonal means 2 and 2, cross mean 2.5: 2 + 2 - 5.
    assert mmd2_unbiased(kxx, kyy, kxy).item() == pytest.approx(-1.0)


def test_kid_matches_numpy_reference(generator):
    real = torch.randn(60, 32, generator=generator, dtype=torch.float64)
    fake = torch.randn(50, 32, generator=generator, dtype=torch.float64) + 0.3
    mean, std = kid(real, fake, subsets=20, subset_size=15, generator=torch.Generator().manual_seed(7))
    ref_mean, ref_std = numpy_kid(real.numpy(), fake.numpy(), torch_subsets(60, 50, 20, 15, seed=7))
    assert abs(mean - ref_mean) / abs(ref_mean) < 1e-6
    assert abs(std - ref_std) / abs(ref_std) < 1e-6


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kid_matches_torchmetrics(generator, dtype):
    real = torch.randn(40, 64, generator=generator).to(dtype)
    fake = (torch.randn(36, 64, generator=generator) * 1.2 + 0.2).to(dtype)
    # A custom feature module sees the "images" we pass: identity turns them into the features themselves.
    metric = KernelInceptionDistance(feature=nn.Identity(), subsets=25, subset_size=9)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    torch.manual_seed(123)  # torchmetrics draws its subsets from the global RNG
    tm_mean, tm_std = (v.item() for v in metric.compute())
    mean, std = kid(real, fake, subsets=25, subset_size=9, generator=torch.Generator().manual_seed(123))
    # float64: identical up to summation order; float32: torchmetrics rounds its kernels (we evaluate in float64).
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert mean == pytest.approx(tm_mean, rel=tol)
    assert std == pytest.approx(tm_std, rel=tol)


def test_kid_near_zero_for_one_distribution_and_grows_with_shift(generator):
    real = torch.randn(300, 16, generator=generator)
    same = torch.randn(300, 16, generator=generator)
    values = {}
    for shift in (0.0, 0.5, 1.0):
        values[shift] = kid(real, same + shift, subsets=50, subset_size=100, generator=torch.Generator().manual_seed(0))
    mean0, std0 = values[0.0]
    assert abs(mean0) < 3 * std0 + 1e-3
    assert values[0.5][0] > mean0 + 3 * std0
    assert values[1.0][0] > 2 * values[0.5][0]


def test_kid_is_seeded(generator):
    real = torch.randn(30, 8, generator=generator)
    fake = torch.randn(30, 8, generator=generator)
    first = kid(real, fake, subsets=10, subset_size=7, generator=torch.Generator().manual_seed(3))
    again = kid(real, fake, subsets=10, subset_size=7, generator=torch.Generator().manual_seed(3))
    other = kid(real, fake, subsets=10, subset_size=7, generator=torch.Generator().manual_seed(4))
    assert first == again
    assert first != other


def test_kid_rejects_bad_subset_size(generator):
    feats = torch.randn(10, 4, generator=generator)
    with pytest.raises(ValueError, match="subset_size"):
        kid(feats, feats, subsets=2, subset_size=11)
    with pytest.raises(ValueError, match="subset_size"):
        kid(feats, feats, subsets=2, subset_size=1)


def numpy_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Whole-set unbiased MMD² with the KID kernel, written out independently of metrics.kid."""
    d = x.shape[1]
    kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return float(
        kxx[~np.eye(m, dtype=bool)].sum() / (m * (m - 1))
        + kyy[~np.eye(n, dtype=bool)].sum() / (n * (n - 1))
        - 2 * kxy.mean()
    )


def test_kid_standard_error_is_the_leave_one_generated_out_jackknife():
    """Against the textbook jackknife: recompute the whole-set MMD² with each generated image left out."""
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(30, 6)), rng.normal(0.4, 1.2, size=(17, 6))
    loo = np.array([numpy_mmd2(real, np.delete(fake, i, axis=0)) for i in range(len(fake))])
    n = len(fake)
    expected = np.sqrt((n - 1) / n * ((loo - loo.mean()) ** 2).sum())
    got = kid_standard_error(torch.from_numpy(real).float(), torch.from_numpy(fake).float())
    assert got == pytest.approx(expected, rel=1e-5)


def test_kid_standard_error_predicts_the_spread_of_kid_over_generated_sets():
    """The jackknife SE of one draw is close to the standard deviation of KID over independent generated draws
    against a fixed real set (within 35 %: the SE itself is estimated from one draw of 64)."""
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 8, generator=g)
    values, ses = [], []
    for _ in range(40):
        fake = torch.randn(64, 8, generator=g) * 1.3 + 0.3
        values.append(numpy_mmd2(real.double().numpy(), fake.double().numpy()))
        ses.append(kid_standard_error(real, fake))
    assert float(np.median(ses)) == pytest.approx(float(np.std(values)), rel=0.35)


def test_kid_standard_error_needs_three_images():
    with pytest.raises(ValueError, match="at least 3"):
        kid_standard_error(torch.randn(5, 4), torch.randn(2, 4))


def test_kid_difference_equals_an_independent_computation():
    rng = np.random.default_rng(3)
    a = [(float(k), float(s)) for k, s in zip(rng.uniform(50, 90, 3), rng.uniform(2, 6, 3))]
    b = [(float(k), float(s)) for k, s in zip(rng.uniform(50, 90, 3), rng.uniform(2, 6, 3))]
    d = kid_difference(a, b)
    # By hand: the mean difference's variance is the sum of the per-fold variances over folds squared.
    diffs = np.array(a)[:, 0] - np.array(b)[:, 0]
    var = (np.array(a)[:, 1] ** 2 + np.array(b)[:, 1] ** 2).sum() / 9
    z = diffs.mean() / math.sqrt(var)
    assert d.diff == pytest.approx(diffs.mean(), rel=1e-12) and d.se == pytest.approx(math.sqrt(var), rel=1e-12)
    assert d.p_value == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9) and d.folds == 3
    # One fold: the two standard errors combined, the comparison of --best-rule within-noise.
    one = kid_difference([(10.0, 3.0)], [(4.0, 4.0)])
    assert (one.diff, one.se, one.z) == (6.0, 5.0, 1.2)
    for z_limit in (1.0, 2.0):
        assert within_noise(Validation(1, 10.0, 3.0), Validation(0, 4.0, 4.0), z_limit) == (one.z <= z_limit)
    with pytest.raises(ValueError):
        kid_difference(a, b[:2])
