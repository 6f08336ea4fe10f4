"""infra.run_args: which flags a command line gave, and the model-shape settings filled from a checkpoint."""

from __future__ import annotations

import argparse

import pytest

from infra.run_args import CheckpointArgsError, fill_from_checkpoint, given_flags


def parser() -> argparse.ArgumentParser:
    """The flag kinds the entry scripts use: dashed and underscored names, two spellings, switches, a typed value."""
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="DiT-XL/2")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--num-classes", type=int, default=11)
    p.add_argument("--in_channels", type=int, default=4)
    p.add_argument("--image_space", action="store_true")
    p.add_argument("--vae", default="ema")
    p.add_argument("--num-workers", "--num_workers", dest="num_workers", type=int, default=4)
    p.add_argument("--ghg", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--data-path", required=True)
    p.set_defaults(extra="set_defaults value")
    return p


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (["--data-path", "d"], {"data_path"}),
        (["--data-path=d", "--image-size=64"], {"data_path", "image_size"}),
        (["--data-path", "d", "--num-workers", "0"], {"data_path", "num_workers"}),
        (["--data-path", "d", "--num_workers=0"], {"data_path", "num_workers"}),
        (["--data-path", "d", "--no-ghg"], {"data_path", "ghg"}),
        (["--data-path", "d", "--ghg"], {"data_path", "ghg"}),  # the default value, but given
        (["--data-path", "d", "--image_space", "--in_channels", "3"], {"data_path", "image_space", "in_channels"}),
        (["--data-path", "d", "--image-size", "256"], {"data_path", "image_size"}),  # equal to the default
        (["--data-path", "d", "--image-si", "64"], {"data_path", "image_size"}),  # an abbreviation argparse accepts
    ],
)
def test_given_flags_sees_every_spelling(argv, want):
    p = parser()
    assert given_flags(p, argv) == want
    # The caller's parser is untouched: its defaults still apply.
    args = p.parse_args(["--data-path", "d"])
    assert (args.image_size, args.num_workers, args.ghg, args.extra) == (256, 4, True, "set_defaults value")


def test_fill_takes_what_was_not_given_and_reports_it():
    p = parser()
    argv = ["--data-path", "d", "--num-classes", "5"]
    args = p.parse_args(argv)
    saved = argparse.Namespace(
        model="GeCA-T", image_size=16, num_classes=5, in_channels=3, image_space=True, diffusion_steps=50, vae="ema"
    )
    taken, overridden = fill_from_checkpoint(p, args, given_flags(p, argv), saved, "--ckpt c.pt")
    assert (args.model, args.image_size, args.in_channels, args.image_space, args.num_classes) == (
        "GeCA-T",
        16,
        3,
        True,
        5,
    )
    assert args.diffusion_steps == 50  # no such flag in this parser: set as an attribute all the same
    assert taken == [
        "--model GeCA-T",
        "--image-size 16",
        "--in_channels 3",
        "--image_space",
        "--diffusion-steps 50",
        "--vae ema",
    ]
    assert overridden == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--image-size", "64"], "--image-size 64 contradicts --ckpt c.pt, which was trained with --image-size 16;"),
        (["--model=DiT-T/2"], "--model DiT-T/2 contradicts --ckpt c.pt, which was trained with --model GeCA-T;"),
        (["--in_channels", "4"], "--in_channels 4 contradicts --ckpt c.pt, which was trained with --in_channels 3;"),
        (["--num-classes", "11"], "--num-classes 11 contradicts --ckpt c.pt, which was trained with --num-classes 5"),
    ],
)
def test_a_contradicting_flag_is_one_line_and_changes_nothing(flags, message):
    p = parser()
    argv = ["--data-path", "d", *flags]
    args = p.parse_args(argv)
    before = vars(args).copy()
    saved = argparse.Namespace(model="GeCA-T", image_size=16, num_classes=5, in_channels=3, image_space=True)
    with pytest.raises(CheckpointArgsError) as err:
        fill_from_checkpoint(p, args, given_flags(p, argv), saved, "--ckpt c.pt")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert vars(args) == before


def test_a_contradicting_switch_names_both_states():
    p = parser()
    argv = ["--data-path", "d", "--image_space"]
    args = p.parse_args(argv)
    with pytest.raises(
        ValueError, match="^--image_space contradicts --ckpt c.pt, which was trained with no --image_sp"
    ):
        fill_from_checkpoint(p, args, given_flags(p, argv), argparse.Namespace(image_space=False), "--ckpt c.pt")


def test_given_values_equal_to_the_checkpoint_pass_and_the_vae_may_differ():
    p = parser()
    argv = ["--data-path", "d", "--model", "GeCA-T", "--image-size=16", "--vae", "/elsewhere/vae"]
    args = p.parse_args(argv)
    saved = argparse.Namespace(model="GeCA-T", image_size=16, vae="results/vae")
    taken, overridden = fill_from_checkpoint(p, args, given_flags(p, argv), saved, "--ckpt c.pt")
    assert taken == [] and args.vae == "/elsewhere/vae"
    assert overridden == ["--vae /elsewhere/vae (the checkpoint was trained with results/vae)"]
    # Not given: the training run's relative VAE folder is kept exactly as it was saved.
    args = p.parse_args(["--data-path", "d"])
    fill_from_checkpoint(p, args, given_flags(p, ["--data-path", "d"]), saved, "--ckpt c.pt")
    assert args.vae == "results/vae"


@pytest.mark.parametrize("saved", [None, {}, argparse.Namespace(model="GeCA-T")])
def test_checkpoints_without_saved_flags_keep_the_given_ones(saved):
    """A bare state dict (None), and a reference checkpoint whose args lack this project's settings."""
    p = parser()
    argv = ["--data-path", "d", "--image-size", "64", "--in_channels", "3"]
    args = p.parse_args(argv)
    taken, _ = fill_from_checkpoint(p, args, given_flags(p, argv), saved, "--ckpt c.pt")
    assert (args.image_size, args.in_channels, args.num_classes) == (64, 3, 11)
    assert not hasattr(args, "diffusion_steps")
    assert args.model == ("GeCA-T" if saved else "DiT-XL/2")
    assert taken == (["--model GeCA-T"] if saved else [])


def test_keys_limit_what_is_filled():
    p = parser()
    args = p.parse_args(["--data-path", "d"])
    saved = {"model": "GeCA-T", "image_size": 16, "vae": "mse"}
    taken, _ = fill_from_checkpoint(p, args, set(), saved, "--resume last.pt", keys=("model", "image_size"))
    assert taken == ["--model GeCA-T", "--image-size 16"] and args.vae == "ema"
