"""Logging set-up: rank 0 logs to the console and to a run-directory file, other ranks stay quiet."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_FORMAT = "[%(asctime)s] %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"


def create_logger(name: str, logging_dir: str | Path | None = None, rank: int = 0) -> logging.Logger:
    """A logger writing to stdout and `{logging_dir}/log.txt` on rank 0, and discarding messages elsewhere.

    Args:
        name: logger name (one per script).
        logging_dir: folder of `log.txt`; None logs to the console only.
        rank: global rank of this process.

    Returns:
        The configured logger (handlers are replaced, so calling twice does not duplicate lines).
    """
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    if rank == 0:
        logger.setLevel(logging.INFO)
        fmt = logging.Formatter(_FORMAT, datefmt=_DATEFMT)
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(fmt)
        logger.addHandler(console)
        if logging_dir is not None:
            Path(logging_dir).mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(Path(logging_dir) / "log.txt")
            file_handler.setFormatter(fmt)
            logger.addHandler(file_handler)
    else:
        logger.addHandler(logging.NullHandler())
        logger.setLevel(logging.ERROR)
    return logger
