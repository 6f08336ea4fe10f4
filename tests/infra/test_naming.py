"""Folder names that later commands depend on match the reference's (docs/REFERENCE.md §3.2, §3.3); shared flag
types."""

from __future__ import annotations

from infra.naming import experiment_dir, sample_folder_name


def test_sample_folder_name_matches_reference_example():
    # docs/REFERENCE.md §3.3 / README example of the reference.
    name = sample_folder_name("GeCA-S", 0, 250, "./results/000-GeCA-S-0/checkpoints/best_ckpt.pt", 256, "ema", 1.5, 0)
    assert name == "GeCA-S-GS-fold-0-nstep-250-best_ckpt-size-256-vae-ema-cfg-1.5-seed-0"
    assert sample_folder_name("DiT-S/2", 3, 50, "x.pt", 512, "mse", 4.0, 7) == (
        "DiT-S-2-GS-fold-3-nstep-50-x-size-512-vae-mse-cfg-4.0-seed-7"
    )


def test_experiment_dir_counts_existing_entries(tmp_path):
    assert experiment_dir(tmp_path / "missing", "GeCA-S", 8).name == "000-GeCA-S-8"
    (tmp_path / "000-GeCA-S-8").mkdir()
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / ".DS_Store").write_text("")  # hidden: the reference's glob does not see it
    assert experiment_dir(tmp_path, "DiT-XL/2", 0).name == "002-DiT-XL-2-0"


def test_image_size_flag_is_shared_by_the_scripts():
    import argparse

    import pytest

    import evaluate
    import sample_ddp
    from infra.argtypes import image_size_flag

    assert image_size_flag("16") == 16 and image_size_flag("256") == 256
    for bad in ("0", "60", "-8"):
        with pytest.raises(argparse.ArgumentTypeError, match="multiple of 8"):
            image_size_flag(bad)
    good = {evaluate: ["--real", "r", "--gen", "g"], sample_ddp: ["--data-path", "d"]}
    for module, argv in good.items():
        assert module.build_parser().parse_args([*argv, "--image-size", "16"]).image_size == 16
        with pytest.raises(SystemExit):
            module.build_parser().parse_args([*argv, "--image-size", "60"])
