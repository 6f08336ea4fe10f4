"""Image files as 8-bit RGB: the one place that decides how each PIL mode becomes RGB, and the per-file checks.

8-bit modes (grey, palette, RGB, with or without alpha, CMYK, ...) go through PIL's own `convert("RGB")`, exactly as
the reference reads every image (docs/REFERENCE.md §2.3): alpha is dropped, a palette is looked up. Palette images
pass through RGBA first, so a palette with transparency converts without PIL's warning (the colours are the same).

16-bit greyscale (PIL modes `I;16*`, and `I` when its values fit in 16 bits) is scaled to 8 bits over the full
16-bit range, v8 = round(v16 * 255 / 65535). PIL's `convert("RGB")` would instead clip every value above 255, which
turns a typical 16-bit scan almost entirely white. Modes with no defined 8-bit range (32-bit float `F`, 32-bit
integers beyond 16 bits) are refused with the reason rather than guessed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from infra.errors import UserError

# Modes that PIL's convert("RGB") maps to 8-bit RGB without loss of meaning.
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"})
# 16-bit greyscale in its byte orders; scaled, not clipped.
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# 32-bit integer greyscale: accepted when every value lies in [0, 65535] (how PIL opens some 16-bit files).
INT32_MODE = "I"
_UINT16_MAX = 65535

# How thoroughly `image_file_problem` looks at a file, cheapest first.
CHECK_LEVELS = ("header", "verify", "decode")


class UnsupportedImageError(ValueError):
    """An image whose pixel format has no defined conversion to 8-bit RGB."""


def mode_problem(mode: str) -> str | None:
    """Why an image of PIL mode `mode` cannot be read as RGB, or None when it can (possibly after a range check)."""
    if mode in EIGHT_BIT_MODES or mode in SIXTEEN_BIT_MODES or mode == INT32_MODE:
        return None
    if mode == "F":
        return "32-bit floating-point pixels (mode F) have no defined 8-bit range; save the image as 8- or 16-bit"
    return f"PIL mode {mode} has no defined conversion to 8-bit RGB"


def _scale_16_to_8(values: np.ndarray) -> np.ndarray:
    """uint16-range integers -> uint8, rounding v * 255 / 65535 (0 -> 0, 65535 -> 255, 257 -> 1)."""
    return ((values.astype(np.uint32) * 255 + _UINT16_MAX // 2) // _UINT16_MAX).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """An opened image as 8-bit RGB, by the rules of the module docstring.

    Args:
        image: any PIL image (it is loaded if it was only opened).

    Returns:
        A new "RGB" image of the same size.

    Raises:
        UnsupportedImageError: the mode has no defined 8-bit conversion, or an `I` image holds values outside
            [0, 65535].
    """
    mode = image.mode
    reason = mode_problem(mode)
    if reason is not None:
        raise UnsupportedImageError(reason)
    if mode in ("P", "PA"):
        return image.convert("RGBA").convert("RGB")
    if mode in EIGHT_BIT_MODES:
        return image.convert("RGB")
    values = np.asarray(image)  # (H, W) uint16 (any byte order) or int32
    if mode == INT32_MODE:
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > _UINT16_MAX:
            raise UnsupportedImageError(
                f"32-bit integer pixels (mode I) range over [{low}, {high}], beyond 16 bits; no defined 8-bit range"
            )
    return Image.fromarray(_scale_16_to_8(values), mode="L").convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """Read an image file as 8-bit RGB (see `to_rgb`)."""
    with Image.open(path) as image:
        return to_rgb(image)


def image_file_problem(path: str | Path, min_size: int | None = None, level: str = "verify") -> tuple[str, str] | None:
    """What makes an image file unusable for training or metrics, or None when nothing does.

    Args:
        path: the file (it must exist).
        min_size: smallest allowed shorter side in pixels (the crop size), or None for no size check.
        level: "header" opens the file and checks format, mode and size (reads only the header); "verify" also
            runs PIL's integrity check over the whole file (PNG chunk checksums; catches truncated files);
            "decode" also decodes every pixel and converts it to RGB. `I` images are always decoded, because
            whether their values fit in 16 bits cannot be seen in the header.

    Returns:
        (reason, detail): a reason shared by files with the same problem, such as "not an image file PIL can
        identify" or "smaller than the 32-pixel crop (...)", and this file's detail ("16 x 12 pixels"; may be "").
    """
    if level not in CHECK_LEVELS:
        raise UserError(f"image check level must be one of {CHECK_LEVELS}, got {level!r}")
    try:
        with Image.open(path) as image:
            mode, (width, height) = image.mode, image.size
            reason = mode_problem(mode)
            if reason is not None:
                return reason, ""
            if min_size is not None and min(width, height) < min_size:
                return (
                    f"smaller than the {min_size}-pixel crop (it would be upsampled; use larger images or a smaller "
                    "--image-size)",
                    f"{width} x {height} pixels",
                )
            if level != "header":
                image.verify()
        if level == "decode" or mode == INT32_MODE:
            with Image.open(path) as image:
                to_rgb(image)
    except UnidentifiedImageError:
        return "not an image file PIL can identify", ""
    except UnsupportedImageError as err:
        return str(err), ""
    except Exception as err:  # PIL raises many types (SyntaxError, OSError, struct.error, ...) for damaged files
        return "damaged or truncated", f"{type(err).__name__}: {err}"
    return None
