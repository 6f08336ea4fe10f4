"""Suite-wide fixtures: offline hub, seeded generators, tiny model settings, GPU marker handling."""

from __future__ import annotations

import os

# Missing pretrained weights must fail in milliseconds, not after network retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers.threads import torch_threads  # noqa: E402

# Tiny settings for CPU tests: not paper configurations.
TINY_LATENT = 8
TINY_CLASSES = 11
TINY_CHANNELS = 4


# Test folders whose every test runs on one torch thread (tiny tensors); elsewhere a module opts in with
# `pytestmark = pytest.mark.one_thread`, a test with the `one_thread` fixture, a block with `torch_threads(1)`.
ONE_THREAD_DIRS = ("diffusion", "downstream", "models")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def generator() -> torch.Generator:
    """A CPU generator seeded with 0; each test gets a fresh one."""
    return torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Every test starts from the same global seeds, whatever ran before it."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_tf32():
    """Scripts' main() sets the process-wide TF32 switches (--tf32); later tests get them back as they were."""
    from infra.precision import set_tf32_state, tf32_state

    before = tf32_state()
    yield
    set_tf32_state(before)


@pytest.fixture
def one_thread():
    """The test runs on one torch intra-op thread."""
    with torch_threads(1):
        yield


@pytest.fixture(autouse=True)
def _one_thread_where_asked(request: pytest.FixtureRequest):
    """One torch thread for tests marked `one_thread` and for every test under ONE_THREAD_DIRS."""
    folder = request.node.path.parent.name
    if request.node.get_closest_marker("one_thread") is None and folder not in ONE_THREAD_DIRS:
        yield
        return
    with torch_threads(1):
        yield
