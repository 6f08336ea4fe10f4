"""Reliability of the infrastructure: leftovers of killed writes, isolated random streams, finite checkpoints, and
checkpoint files that cannot be read."""

from __future__ import annotations

import argparse
import os
import pickle
import random

import numpy as np
import pytest
import torch

from infra.atomic_io import atomic_write, atomic_write_text, remove_stale_temps, temp_file_target
from infra.checkpoint import (
    NonFiniteCheckpointError,
    UnsafeCheckpointError,
    load_checkpoint,
    non_finite_entries,
    save_checkpoint,
)
from infra.seeding import global_rng_state, isolated_global_rng, seed_everything, set_global_rng_state


def _killed_write(path) -> None:
    """Start an atomic write of `path` in a child process that dies (os._exit, like kill -9) half-way through."""
    pid = os.fork()
    if pid == 0:  # the child: no clean-up code runs after os._exit

        def die(f):
            f.write(b"half a file")
            f.flush()
            os._exit(0)

        atomic_write(path, die)
    os.waitpid(pid, 0)


def test_stale_temps_of_killed_writes_are_removed(tmp_path):
    (tmp_path / "samples").mkdir()
    atomic_write_text(tmp_path / "last.pt", "previous")
    _killed_write(tmp_path / "last.pt")
    _killed_write(tmp_path / "samples" / "000001.png")
    leftovers = sorted(tmp_path.rglob("*.tmp"))
    assert sorted(temp_file_target(p) for p in leftovers) == ["000001.png", "last.pt"]
    # Files that merely look alike stay: another tool's temp names, hidden files, the targets themselves.
    keep = [".hidden", "x.tmp", ".a.b.tmp", ".last.pt.ABCDEFGH.tmp", "last.pt"]
    for name in keep[:-1]:
        (tmp_path / name).write_text("keep")

    assert remove_stale_temps(tmp_path, recursive=False, targets=["other.png"]) == []
    top = remove_stale_temps(tmp_path, recursive=False)
    assert [p.name for p in top] == [p.name for p in leftovers if p.parent == tmp_path]
    removed = remove_stale_temps(tmp_path)
    assert [p.parent.name for p in removed] == ["samples"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(keep)
    assert (tmp_path / "last.pt").read_text() == "previous"
    assert remove_stale_temps(tmp_path / "absent") == []


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_isolated_global_rng_leaves_every_stream_where_it_was():
    seed_everything(3)
    expected = _draws()
    seed_everything(3)
    with isolated_global_rng():
        torch.nn.Linear(8, 8)  # a layer's initialisation draws from the torch stream
        random.random(), np.random.rand(5), torch.randn(7)
    assert _draws() == expected
    seed_everything(3)
    with pytest.raises(RuntimeError), isolated_global_rng():
        torch.randn(3)
        raise RuntimeError("an error inside the block restores the streams too")
    assert _draws() == expected


def test_global_rng_state_round_trips_through_a_checkpoint(tmp_path):
    seed_everything(5)
    _draws()
    save_checkpoint(tmp_path / "c.pt", rng=[global_rng_state()])
    expected = _draws()
    seed_everything(99)
    set_global_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"][0])  # weights-only load accepts the state
    assert _draws() == expected


def test_non_finite_states_are_never_written(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, model={"w": torch.ones(2)}, best_kid=float("inf"))  # a float inf outside tensors is fine
    state = {
        "model": {"w": torch.tensor([1.0, float("nan")]), "steps": torch.tensor([3])},
        "opt": {"state": {0: {"exp_avg": torch.tensor([float("-inf")]), "step": torch.tensor(2.0)}}},
    }
    assert non_finite_entries(state) == ["model.w", "opt.state.0.exp_avg"]
    with pytest.raises(NonFiniteCheckpointError, match=r"last\.pt: non-finite values in model\.w, opt\.state\.0"):
        save_checkpoint(path, state)
    torch.testing.assert_close(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


class _Payload:
    """A class outside the allow-list."""


def test_unreadable_checkpoints_name_the_file_and_what_was_expected(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, model={"w": torch.zeros(64)}, args=argparse.Namespace(lr=1e-4))
    cases = {
        "garbage.pt": np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes(),
        "truncated.pt": good.read_bytes()[: good.stat().st_size // 2],
        "empty.pt": b"",
        "text.pt": b"hello\n",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match="cannot be read as a PyTorch checkpoint") as err:
            load_checkpoint(tmp_path / name, expected="a resumable last.pt")
        assert str(tmp_path / name) in str(err.value) and "expected a resumable last.pt" in str(err.value)
        assert "weights_only" not in str(err.value)  # torch's advice to unpickle anything is not passed on
    with pytest.raises(ValueError, match=r"good\.pt lacks the entries \['rng'\] \(it has args, model; expected x\)"):
        load_checkpoint(good, required=("model", "rng"), expected="x")
    torch.save({"model": {}, "payload": _Payload()}, tmp_path / "unsafe.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"unsafe\.pt: refused, .*class .*_Payload") as err:
        load_checkpoint(tmp_path / "unsafe.pt")
    assert isinstance(err.value, pickle.UnpicklingError) and isinstance(err.value, ValueError)
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt holds a list, not a dict"):
        load_checkpoint(tmp_path / "list.pt")
