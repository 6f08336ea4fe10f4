"""The settings record of resumable outputs: which earlier outputs a run may keep (infra/provenance.py)."""

from __future__ import annotations

import json

import pytest

from infra.errors import UserError
from infra.provenance import check_settings, label_item, source_identity, write_settings

SETTINGS = {"ckpt": "a.pt:10:1", "global_seed": 0, "cfg_scale": 1.5}
ITEMS = ["01", "10", "11"]


def check(record, settings=SETTINGS, items=ITEMS, existing=(0, 1)):
    check_settings(record, settings, items, list(existing), "images in out/gen_samples", "--sample-dir")


def test_the_record_is_the_settings_and_one_item_per_output(tmp_path):
    record = tmp_path / "gen_samples_settings.json"
    write_settings(record, SETTINGS, ITEMS)
    assert json.loads(record.read_text()) == {"settings": SETTINGS, "items": ITEMS}
    assert label_item([0, 1, 0, 0, 1]) == "01001"


def test_outputs_are_kept_only_when_made_with_the_same_settings_for_the_same_items(tmp_path):
    record = tmp_path / "gen_samples_settings.json"
    check(record, existing=())  # an empty folder: nothing to compare
    write_settings(record, SETTINGS, ITEMS)
    check(record)  # the same run, continued
    check(record, items=[*ITEMS, "00"], existing=(0, 1, 2))  # more outputs, the existing ones for the same items
    with pytest.raises(UserError, match=r"2 images in out/gen_samples were made with other settings \(ckpt "):
        check(record, {**SETTINGS, "ckpt": "b.pt:10:2"})
    with pytest.raises(UserError, match=r"\(global_seed 0 -> 1; cfg_scale 1.5 -> None\)"):
        check(record, {"ckpt": "a.pt:10:1", "global_seed": 1})
    with pytest.raises(UserError, match="output 1 was made for '10', this run wants '00'; remove them"):
        check(record, items=["01", "00", "11"])
    with pytest.raises(UserError, match="output 2 lies beyond the 2 outputs of this run; .* another --sample-dir"):
        check(record, items=ITEMS[:2], existing=(0, 2))
    check(record, items=["01", "10", "00"])  # output 2 changed, but it is not there


def test_outputs_without_a_readable_record_are_not_adopted(tmp_path):
    record = tmp_path / "gen_samples_settings.json"
    with pytest.raises(UserError, match="2 images in out/gen_samples but no readable .*gen_samples_settings.json"):
        check(record)
    record.write_text("{not json")
    with pytest.raises(UserError, match="no readable"):
        check(record)


def test_a_source_is_identified_by_its_files_or_its_name(tmp_path):
    assert source_identity("ema") == "ema"  # a hub name
    ckpt = tmp_path / "best_ckpt.pt"
    ckpt.write_bytes(b"weights")
    first = source_identity(str(ckpt))
    assert first.startswith(f"{ckpt.resolve()}:7:")
    ckpt.write_bytes(b"retrained")  # another size (and time): another identity
    assert source_identity(str(ckpt)) != first
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text("{}")
    (vae / "diffusion_pytorch_model.safetensors").write_bytes(b"12345")
    files = [str(vae.resolve() / name) for name in sorted(p.name for p in vae.iterdir())]
    assert [part.rsplit(":", 2)[0] for part in source_identity(str(vae)).split(";")] == files
