"""Input validation: every bad input fails before any work, naming the file and the first offending rows."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data.datasets import FoldCSVDataset
from data.labels import OCT_LABELS
from data.validate import validate_fold_csv


@pytest.fixture
def root(oct_root: Path, tmp_path: Path) -> Path:
    """A private copy of the phantom dataset that a test may break."""
    return Path(shutil.copytree(oct_root, tmp_path / "oct"))


def _edit(root: Path, edit) -> Path:
    csv = root / "train_0.csv"
    frame = pd.read_csv(csv, index_col=0)
    edit(frame).to_csv(csv)
    return csv


def test_valid_fold_passes(root):
    frame, labels = validate_fold_csv(root / "train_0.csv", root, OCT_LABELS, image_check="verify")
    assert labels.shape == (len(frame), 11) and labels.dtype.name == "int64"


def test_missing_csv(root):
    with pytest.raises(FileNotFoundError, match=r"train_7\.csv"):
        FoldCSVDataset(root, "train", 7)


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        FoldCSVDataset(tmp_path / "absent", "train", 0)


def test_missing_filename_column(root):
    _edit(root, lambda f: f.drop(columns="filename"))
    with pytest.raises(ValueError, match=r"train_0\.csv: missing column\(s\) \['filename'\]"):
        FoldCSVDataset(root, "train", 0)


def test_missing_label_column(root):
    _edit(root, lambda f: f.drop(columns=["CNV", "RVO"]))
    with pytest.raises(ValueError, match=r"train_0\.csv: missing column\(s\) \['CNV', 'RVO'\]"):
        FoldCSVDataset(root, "train", 0)


def test_csv_without_index_column_gets_a_hint(root):
    csv = root / "train_0.csv"
    pd.read_csv(csv, index_col=0).to_csv(csv, index=False)
    frame = pd.read_csv(csv, index_col=0)
    assert frame.index.name == "client_id"
    pd.read_csv(csv).drop(columns="client_id").to_csv(csv, index=False)
    with pytest.raises(ValueError, match="first column is read as the index"):
        FoldCSVDataset(root, "train", 0)


def test_labels_not_binary(root):
    def edit(frame):
        frame = frame.astype({"AMD": object, "DR": object})
        frame.iloc[2, frame.columns.get_loc("AMD")] = 2
        frame.iloc[5, frame.columns.get_loc("DR")] = "yes"
        return frame

    _edit(root, edit)
    # Data row 2 is CSV line 4 (header is line 1).
    with pytest.raises(ValueError, match=r"train_0\.csv: label columns \['AMD', 'DR'\].*2 row\(s\), e\.g\. line 4 "):
        FoldCSVDataset(root, "train", 0)


def test_empty_label_cell(root):
    _edit(root, lambda f: f.astype({"NOR": float}).assign(NOR=lambda d: d["NOR"].where(d.index != d.index[0])))
    with pytest.raises(ValueError, match=r"\['NOR'\].*line 2 "):
        FoldCSVDataset(root, "train", 0)


def test_duplicate_rows(root):
    _edit(root, lambda f: pd.concat([f, f.iloc[[1, 3]]]))
    with pytest.raises(ValueError, match=r"train_0\.csv: duplicate filename in 4 row\(s\), e\.g\. line 3 \(images/"):
        FoldCSVDataset(root, "train", 0)


def test_missing_image_files(root):
    frame = pd.read_csv(root / "train_0.csv", index_col=0)
    for name in frame["filename"].iloc[[0, 4]]:
        (root / name).unlink()
    first = frame["filename"].iloc[0]
    with pytest.raises(
        FileNotFoundError, match=rf"train_0\.csv: image file\(s\) missing .*2 row\(s\), e\.g\. line 2 \({first}\)"
    ):
        FoldCSVDataset(root, "train", 0)
    FoldCSVDataset(root, "train", 0, image_check="none")  # the check can be switched off


def _row_file(root: Path, row: int) -> tuple[Path, str]:
    """The image file of data row `row` of train_0.csv, and its CSV line as error messages give it."""
    name = pd.read_csv(root / "train_0.csv", index_col=0)["filename"].iloc[row]
    return root / name, f"line {row + 2} ({name}"


def test_check_levels(root):
    garbage, garbage_line = _row_file(root, 3)
    garbage.write_bytes(b"not a png")
    FoldCSVDataset(root, "train", 0, image_check="exists")  # existence only
    with pytest.raises(
        ValueError, match=rf"not an image file PIL can identify: 1 row\(s\), e\.g\. {re.escape(garbage_line)}\)"
    ):
        FoldCSVDataset(root, "train", 0, image_check="header")
    shutil.copy(_row_file(root, 4)[0], garbage)
    truncated, truncated_line = _row_file(root, 5)
    truncated.write_bytes(truncated.read_bytes()[:-40])  # the header survives; the end of the pixel data does not
    FoldCSVDataset(root, "train", 0, image_check="header")
    for level in ("verify", "decode"):
        with pytest.raises(
            ValueError, match=rf"damaged or truncated: 1 row\(s\), e\.g\. {re.escape(truncated_line)}: "
        ):
            FoldCSVDataset(root, "train", 0, image_check=level)


def test_unusable_images_fail_by_default_naming_row_file_and_reason(root):
    bad = {1: "random", 3: "float", 6: "small", 7: "small"}
    for row, kind in bad.items():
        path, _ = _row_file(root, row)
        if kind == "random":
            path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
        elif kind == "float":
            Image.fromarray(np.ones((32, 32), np.float32), mode="F").save(path, format="TIFF")
        else:
            Image.new("RGB", (1, row)).save(path)
    with pytest.raises(ValueError) as err:
        FoldCSVDataset(root, "train", 0, min_size=16)
    message = str(err.value)
    assert message.startswith(f"{root / 'train_0.csv'}: unusable image file(s) under {root}: ")
    # One entry per reason, each with its rows: the CSV line, the file and the file's detail.
    assert f"not an image file PIL can identify: 1 row(s), e.g. {_row_file(root, 1)[1]})" in message
    assert (
        f"32-bit floating-point pixels (mode F) have no defined 8-bit range; save the image as 8- or 16-bit: "
        f"1 row(s), e.g. {_row_file(root, 3)[1]})" in message
    )
    small = f"2 row(s), e.g. {_row_file(root, 6)[1]}: 1 x 6 pixels), {_row_file(root, 7)[1]}: 1 x 7 pixels)"
    assert (
        f"smaller than the 16-pixel crop (it would be upsampled; use larger images or a smaller --image-size): {small}"
        in message
    )


def test_size_is_checked_against_the_crop(root):
    path, line = _row_file(root, 2)
    Image.new("L", (40, 12)).save(path)  # shorter side 12
    FoldCSVDataset(root, "train", 0, min_size=12)
    with pytest.raises(ValueError, match=rf"smaller than the 13-pixel crop .*{re.escape(line)}: 40 x 12 pixels\)"):
        FoldCSVDataset(root, "train", 0, min_size=13)


def test_16_bit_greyscale_is_scaled_not_clipped(root):
    path, _ = _row_file(root, 0)
    values = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    Image.fromarray(values).save(path)  # a 16-bit PNG
    with Image.open(path) as img:
        assert img.mode == "I;16"
        clipped = np.asarray(img.convert("RGB"))
    assert (clipped == 255).mean() > 0.9  # PIL's own conversion clips almost every pixel: why data/images.py exists
    image, _ = FoldCSVDataset(root, "train", 0)[0]
    expected = np.floor(values.astype(np.float64) * 255.0 / 65535.0 + 0.5).astype(np.uint8)  # round(v * 255 / 65535)
    got = np.asarray(image)
    assert image.mode == "RGB" and got.shape == (32, 32, 3)
    for channel in range(3):
        np.testing.assert_array_equal(got[..., channel], expected)


def test_32_bit_integer_images_scaled_when_16_bit_else_refused(root):
    path, line = _row_file(root, 0)
    values = np.arange(32 * 32, dtype=np.int32).reshape(32, 32) * 64  # 0 .. 65472: fits in 16 bits
    Image.fromarray(values, mode="I").save(path, format="TIFF")
    image, _ = FoldCSVDataset(root, "train", 0)[0]
    expected = np.floor(values * 255.0 / 65535.0 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(image)[..., 1], expected)
    Image.fromarray(values * 2, mode="I").save(path, format="TIFF")  # up to 130944: beyond 16 bits
    with pytest.raises(
        ValueError, match=rf"32-bit integer pixels \(mode I\) range over \[0, 130944\].*{re.escape(line)}\)"
    ):
        FoldCSVDataset(root, "train", 0)


def test_palette_with_transparency_converts_to_its_colours(root):
    path, _ = _row_file(root, 0)
    palette = np.random.default_rng(1).integers(0, 256, (256, 3), dtype=np.uint8)
    index = np.random.default_rng(2).integers(0, 256, (32, 32), dtype=np.uint8)
    img = Image.fromarray(index, mode="P")
    img.putpalette(palette.flatten().tolist())
    img.info["transparency"] = bytes([0, 128] + [255] * 254)  # per-entry alpha, as in a PNG tRNS chunk
    img.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL warns when a palette with transparency goes straight to RGB
        image, _ = FoldCSVDataset(root, "train", 0)[0]
    np.testing.assert_array_equal(np.asarray(image), palette[index])


def test_file_damaged_after_the_check_names_its_row(root):
    ds = FoldCSVDataset(root, "train", 0)
    path, line = _row_file(root, 2)
    path.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=rf"train_0\.csv: {re.escape(line)}\) cannot be read as an image"):
        ds[2]


def test_message_lists_at_most_five_rows(root):
    _edit(root, lambda f: f.assign(MEM=7))
    with pytest.raises(ValueError) as err:
        FoldCSVDataset(root, "train", 0)
    assert str(err.value).count("line ") == 5 and str(err.value).endswith(", ...")


def test_unknown_image_check(root):
    with pytest.raises(ValueError, match="image check mode"):
        FoldCSVDataset(root, "train", 0, image_check="deep")
