"""Settings a checkpoint decides: which flags the user gave, and the model-shape flags filled from a checkpoint.

`train.py` saves its parsed flags in every checkpoint ("args", an `argparse.Namespace`), as a diffusers model folder
keeps its config. Sampling and resuming need the same architecture, so the shape settings the user leaves out are
taken from the checkpoint, and one the user gives that contradicts it is refused with a one-line message (instead of
a state-dict size-mismatch dump later). A checkpoint without saved flags (a bare state dict, or a reference
checkpoint lacking some of this project's flags) leaves the flags as given.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# The settings that fix a model's shape, by argparse dest, with train.py's spelling (used where a script has no such
# flag, e.g. sample_ddp.py has no --in_channels but its model still needs the checkpoint's channel count).
MODEL_SHAPE_FLAGS: dict[str, str] = {
    "model": "--model",
    "image_size": "--image-size",
    "in_channels": "--in_channels",
    "num_classes": "--num-classes",
    "image_space": "--image_space",
    "diffusion_steps": "--diffusion-steps",
    "vae": "--vae",
}
# Of those, the settings a run may change: the VAE only decodes (SD-VAE ft-EMA and ft-MSE share their encoder, so
# their latents agree) and its saved value may be a training run's relative folder that does not resolve here.
OVERRIDABLE = frozenset({"vae"})


class CheckpointArgsError(ValueError):
    """A flag given on the command line contradicts the setting saved in the checkpoint."""


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The dests of the flags present on a command line, however they were spelled.

    The command line is parsed a second time by a copy of `parser` whose defaults are all suppressed, so only what
    argv set appears: `--flag value` and `--flag=value`, every alias of a flag (`--num-workers` / `--num_workers`),
    accepted abbreviations, `--flag` / `--no-flag` of a BooleanOptionalAction, and a flag given with its default value.

    Args:
        parser: the script's parser; it is not modified.
        argv: the arguments after the program name (None: sys.argv[1:], as argparse reads them).

    Returns:
        Dest names, e.g. {"model", "num_workers", "ghg"}.
    """
    quiet = copy.deepcopy(parser)
    quiet.argument_default = argparse.SUPPRESS
    quiet._defaults.clear()  # set_defaults() values would otherwise appear as if given
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    namespace, _ = quiet.parse_known_args(None if argv is None else list(argv))
    return set(vars(namespace))


def flag_name(parser: argparse.ArgumentParser | None, dest: str) -> str:
    """How a setting is spelled in messages: the parser's first long option for `dest`, else train.py's spelling."""
    for action in parser._actions if parser is not None else ():
        if action.dest == dest:
            longs = [s for s in action.option_strings if s.startswith("--")]
            if longs:
                return longs[0]
    return MODEL_SHAPE_FLAGS.get(dest, "--" + dest)


def format_setting(flag: str, value: Any) -> str:
    """`--image-size 64`; a boolean switch is shown as `--image_space` or `no --image_space`."""
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    return f"{flag} {value}"


def fill_from_checkpoint(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    given: Iterable[str],
    saved: argparse.Namespace | Mapping[str, Any] | None,
    source: str,
    keys: Iterable[str] = MODEL_SHAPE_FLAGS,
) -> tuple[list[str], list[str]]:
    """Take every shape setting the user did not give from the checkpoint's saved flags, in place.

    For each key the checkpoint saved: a key not in `given` takes the saved value (also when the script has no such
    flag, so `args` gains the attribute, e.g. `in_channels` for sample_ddp.py); a given key must equal the saved
    value, except the overridable VAE, whose given value wins and is reported. Keys the checkpoint did not save
    (reference checkpoints, bare state dicts: `saved` None) keep the flag values.

    Args:
        parser: the script's parser (flag spellings for messages).
        args: the parsed flags; updated in place.
        given: dests present on the command line (`given_flags`).
        saved: the checkpoint's "args" entry (a Namespace, or a dict), or None when it has none.
        source: how messages name the checkpoint, e.g. "--ckpt results/000-GeCA-S-0/checkpoints/best_ckpt.pt".
        keys: the settings to fill (default: all of MODEL_SHAPE_FLAGS).

    Returns:
        (taken, overridden): settings taken from the checkpoint as "--flag value" strings, and notes on given
        values that replaced the checkpoint's (the VAE), both in `keys` order, for the caller to log.

    Raises:
        CheckpointArgsError: (a ValueError) a given flag contradicts the checkpoint; the one-line message names the
            flag, its value and the checkpoint's value. Nothing in `args` is changed then.
    """
    values = vars(saved) if isinstance(saved, argparse.Namespace) else dict(saved or {})
    given = set(given)
    updates: dict[str, Any] = {}
    taken, overridden = [], []
    for key in keys:
        if key not in values:
            continue
        flag, want = flag_name(parser, key), values[key]
        if key not in given:
            updates[key] = want
            taken.append(format_setting(flag, want))
        elif getattr(args, key) != want:
            have = getattr(args, key)
            if key not in OVERRIDABLE:
                raise CheckpointArgsError(
                    f"{format_setting(flag, have)} contradicts {source}, which was trained with "
                    f"{format_setting(flag, want)}; drop the flag to use the checkpoint's setting"
                )
            overridden.append(f"{format_setting(flag, have)} (the checkpoint was trained with {want})")
    for key, value in updates.items():
        setattr(args, key, value)
    return taken, overridden
