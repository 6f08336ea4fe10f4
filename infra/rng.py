"""Random draws from per-sample generators, so that a sample's noise does not depend on the batch it is in.

A generator argument is one of:
- None: the global torch generator;
- one `torch.Generator`: the whole batch from one stream (depends on batch composition);
- a sequence of L generators, one per sample: row i of a batch of N draws from generator i % L. With L = N this is
  the noise-fixed-per-sample idea of edm; with N = 2L (the two halves of a classifier-free-guidance batch) sample i
  and its unconditional twin i + L draw from the same stream, one after the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Generator = torch.Generator | Sequence[torch.Generator] | None


# Multiplier that keys a derived seed: a prime above any index or epoch count a run reaches, so distinct
# (base, key) pairs give distinct seeds.
SEED_STRIDE = 1_000_003


def keyed_seed(base: int, key: int, stride: int = SEED_STRIDE) -> int:
    """The seed of stream `key` (an image index, an epoch, a pass) under the run seed `base`.

    Every per-image, per-epoch or per-pass random stream of the project is seeded this way, so a stream depends on
    nothing but its (base, key) pair: not on the batch, the rank or the world size. Nested keys nest calls: training
    validation seeds image i at optimiser step s by `keyed_seed(keyed_seed(seed, s), i, stride=10_000)`.

    Args:
        base: the run (or parent stream) seed.
        key: the stream's key, in [0, stride) for distinct (base, key) pairs to give distinct seeds.
        stride: the multiplier of `base`; the default suits every key a run reaches. Training validation keeps its
            historical 10,000 (image indices within one validation, fewer than 10,000 samples).

    Returns:
        `base * stride + key`.
    """
    return base * stride + key


def mixed_sequence(*keys: int) -> np.random.SeedSequence:
    """The numpy seed sequence of the stream keyed by `keys` (run seed, stream id, index, ...), hashed so that
    nearby keys give unrelated streams.

    The second way a stream is derived, beside keyed_seed: feature extraction (noise and flips per image), the domain
    VAE's training order and noise, and the phantoms (one sequence per image and per patient) use it. Both stay, each
    where it was first used, so that every output made before this module held both is reproduced bit for bit.
    """
    return np.random.SeedSequence([int(k) for k in keys])


def mixed_seed(*keys: int) -> int:
    """A 63-bit integer seed (for a torch or numpy generator) drawn from mixed_sequence(*keys)."""
    return int(mixed_sequence(*keys).generate_state(1, np.uint64)[0] >> np.uint64(1))


def spawned_generators(seed: np.random.SeedSequence, n: int) -> list[np.random.Generator]:
    """`n` independent numpy generators derived from `seed` without mutating it (unlike SeedSequence.spawn): child k
    is the sequence with spawn key k appended (the phantoms' per-aspect streams: anatomy, lesions, speckle)."""
    keys = [
        np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, k), pool_size=seed.pool_size) for k in range(n)
    ]
    return [np.random.default_rng(k) for k in keys]


def sample_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One seeded generator per sample, on `device`."""
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(s))
        gens.append(g)
    return gens


def _draw(fn, shape: Sequence[int], generator: Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if generator is None or isinstance(generator, torch.Generator):
        gdev = generator.device if isinstance(generator, torch.Generator) else device
        out = fn(tuple(shape), generator=generator, device=gdev, dtype=dtype)
        return out.to(device)
    gens = list(generator)
    n = shape[0]
    if n % len(gens) != 0:
        raise ValueError(f"batch of {n} cannot draw from {len(gens)} per-sample generators")
    rows = [
        fn(tuple(shape[1:]), generator=gens[i % len(gens)], device=gens[i % len(gens)].device, dtype=dtype)
        for i in range(n)
    ]
    return torch.stack(rows).to(device)


def randn(
    shape: Sequence[int],
    generator: Generator = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal tensor of `shape`, drawn as the module docstring describes."""
    return _draw(torch.randn, shape, generator, torch.device(device), dtype)


def rand(
    shape: Sequence[int],
    generator: Generator = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform [0, 1) tensor of `shape`, drawn as the module docstring describes."""
    return _draw(torch.rand, shape, generator, torch.device(device), dtype)
