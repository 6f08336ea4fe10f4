"""Infrastructure: per-sample random streams, atomic writes, seeding, unwrapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infra import rng
from infra.atomic_io import atomic_np_save, atomic_write
from infra.distributed import pick_device, setup_distributed, unwrap_model
from infra.errors import UserError
from infra.seeding import rank_seed


def test_per_sample_noise_does_not_depend_on_batch():
    # Sample 3's noise must be the same whether drawn in a batch of 4 or alone.
    batch = rng.randn((4, 2, 3), rng.sample_generators([10, 11, 12, 13]))
    alone = rng.randn((1, 2, 3), rng.sample_generators([13]))
    torch.testing.assert_close(batch[3], alone[0], rtol=0, atol=0)


def test_cfg_batch_cycles_generators():
    gens = rng.sample_generators([5, 6])
    out = rng.randn((4, 3), gens)
    g5 = torch.Generator().manual_seed(5)
    first, second = torch.randn(3, generator=g5), torch.randn(3, generator=g5)
    torch.testing.assert_close(out[0], first, rtol=0, atol=0)
    torch.testing.assert_close(out[2], second, rtol=0, atol=0)
    with pytest.raises(ValueError, match="per-sample generators"):
        rng.randn((3, 3), gens)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "x.npy"
    atomic_np_save(path, np.arange(3))

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    np.testing.assert_array_equal(np.load(path), np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]


def test_rank_seed_and_single_process_bootstrap(monkeypatch):
    assert rank_seed(3, 4, 1) == 13
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = setup_distributed(device="cpu")
    assert (info.rank, info.world_size, info.is_main, info.device.type) == (0, 1, True, "cpu")


def test_unwrap_model_through_compile_wrapper():
    net = torch.nn.Linear(2, 2)
    assert unwrap_model(net) is net
    assert unwrap_model(torch.compile(net)) is net


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        atomic_np_save(tmp_path / "y.npy", np.zeros(2))
    finally:
        os.umask(umask)
    assert (tmp_path / "y.npy").stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_a_cuda_device_without_cuda_is_a_user_error_or_falls_back_where_asked():
    assert pick_device(3) == torch.device("cpu") and pick_device(0, "cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="cuda:1 requested but CUDA is not available"):
        pick_device(0, "cuda:1")
    said = []
    assert pick_device(0, "cuda:0", cpu_fallback=True, log=said.append) == torch.device("cpu")
    assert said == ["device cuda:0 requested but CUDA is not available; running on cpu"]
