"""argparse value types shared by several entry scripts."""

from __future__ import annotations

import argparse


def image_size_flag(text: str) -> int:
    """`--image-size`: a positive multiple of 8 (the VAE downsamples by 8; the reference's 128/256/512 among them)."""
    value = int(text)
    if value < 8 or value % 8 != 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive multiple of 8")
    return value
