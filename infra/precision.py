"""TF32 switch shared by every entry script: one flag, one default, applied in `main()`.

The reference turns TF32 on for CUDA matmuls and cuDNN convolutions when `extract_features.py` is imported, and so in
`evaluate.py`, which imports it; its training and sampling scripts do the same (docs/REFERENCE.md §3.1, §3.5). Here
every script takes `--tf32/--no-tf32` (default on, the reference's setting; `infra.flags.add_tf32_flag`) and calls
`set_tf32` from `main()`, so importing a module changes nothing.
"""

from __future__ import annotations

import torch


def set_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 in CUDA matmuls and cuDNN convolutions, process-wide.

    Sets both switches explicitly, so `--no-tf32` also turns off cuDNN's TF32, which PyTorch allows by default.
    Safe on CPU-only builds: the switches are plain settings there and change no CPU computation.

    Args:
        enabled: the value of `--tf32`.
    """
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def tf32_state() -> tuple[bool, bool]:
    """(matmul, cuDNN) TF32 switches as they are now, e.g. to restore them after a test or a benchmark."""
    return bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)


def set_tf32_state(state: tuple[bool, bool]) -> None:
    """Restore (matmul, cuDNN) TF32 switches saved by `tf32_state`."""
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = state
