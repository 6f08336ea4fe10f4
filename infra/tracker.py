"""Optional wandb tracking behind one thin wrapper that is a no-op when disabled or when wandb is not installed."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any


class Tracker:
    """Logs scalars and images to wandb when enabled, and does nothing otherwise.

    Args:
        enabled: the user asked for wandb (`--wandb`) and this is the main process.
        project: wandb project name (reference: "Fast-DiT" for training, "GeCA-Eval" for evaluation).
        config: run configuration to record.
        logger: where to say that wandb is unavailable.
    """

    def __init__(self, enabled: bool, project: str, config: dict[str, Any], logger: logging.Logger | None = None):
        self._run = None
        if not enabled:
            return
        if importlib.util.find_spec("wandb") is None:
            if logger is not None:
                logger.info("wandb requested but not installed; tracking disabled")
            return
        import wandb

        self._wandb = wandb
        self._run = wandb.init(project=project, config=config)

    @property
    def active(self) -> bool:
        return self._run is not None

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        if self._run is not None:
            self._run.log(values, step=step)

    def log_image(self, key: str, image: Any, caption: str = "", step: int | None = None) -> None:
        if self._run is not None:
            self._run.log({key: self._wandb.Image(image, caption=caption)}, step=step)

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
