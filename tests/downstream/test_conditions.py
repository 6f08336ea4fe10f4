"""Condition syntax of --conditions."""

from __future__ import annotations

from pathlib import Path

import pytest

from downstream.conditions import Condition, parse_condition, parse_conditions, synthetic_sets, table_order


def test_parse_each_form():
    assert parse_condition("noaug") == Condition("noaug", "noaug")
    assert parse_condition("geometric").display_name == "Baseline (Geometric Aug)"
    named = parse_condition("synthetic:GeCA-S=out/GeCA-S-GS-fold-0")
    assert (named.name, named.kind, named.sample_dir) == ("GeCA-S", "synthetic", "out/GeCA-S-GS-fold-0")
    bare = parse_condition("synthetic:some/dir/LDM-B-run/")
    assert bare.name == "LDM-B-run" and bare.augment
    # '=' inside a path (a separator before it) is part of the folder, not a name.
    odd = parse_condition("synthetic:a/b=c")
    assert (odd.name, odd.sample_dir) == ("b=c", "a/b=c")
    assert parse_condition(named.spec()) == named
    assert not parse_condition("noaug").augment


def test_fold_placeholder():
    c = parse_condition("synthetic:X=samples/X-fold-{fold}-seed-0")
    assert c.folder(3) == Path("samples/X-fold-3-seed-0")


@pytest.mark.parametrize(
    "text",
    [
        "foo",
        "synthetic",
        "synthetic:",
        "synthetic:X=",
        "geometric:dir",
        "synthetic:noaug=d",
        "synthetic-only",
        "synthetic-only:",
        "synthetic-only:synthetic-only=d",
        "synthetic:X (synthetic only)=d",
    ],
)
def test_bad_syntax_is_rejected(text):
    with pytest.raises(ValueError, match="--conditions"):
        parse_condition(text)


def test_duplicates_and_order():
    with pytest.raises(ValueError, match="duplicate"):
        parse_conditions(["geometric", "synthetic:a/run", "synthetic:b/run"])
    order = table_order(parse_conditions(["synthetic:S=d", "noaug", "geometric"]))
    assert [c.name for c in order] == ["geometric", "noaug", "S"]


def test_synthetic_only_form():
    only = parse_condition("synthetic-only:GeCA-S=out/GeCA-S-fold-{fold}")
    assert (only.name, only.kind, only.set_name) == ("GeCA-S (synthetic only)", "synthetic-only", "GeCA-S")
    assert only.display_name == "GeCA-S (synthetic only)" and only.augment
    assert not only.uses_real and only.uses_synthetic and only.folder(2) == Path("out/GeCA-S-fold-2")
    assert parse_condition(only.spec()) == only
    bare = parse_condition("synthetic-only:some/dir/LDM-B-run")
    assert (bare.name, bare.set_name) == ("LDM-B-run (synthetic only)", "LDM-B-run")
    mixed = parse_condition("synthetic:GeCA-S=out/GeCA-S-fold-{fold}")
    assert mixed.uses_real and mixed.uses_synthetic and mixed.set_name == "GeCA-S"
    assert parse_condition("geometric").uses_real and not parse_condition("geometric").uses_synthetic


def test_synthetic_sets_pair_conditions_by_name():
    conditions = parse_conditions(["geometric", "synthetic:A=da", "synthetic-only:A=da", "synthetic-only:B=db"])
    assert synthetic_sets(conditions) == {"A": "da", "B": "db"}
    assert [c.name for c in table_order(conditions)] == ["geometric", "A", "A (synthetic only)", "B (synthetic only)"]
    # Without names, both kinds of one folder name the same set.
    assert synthetic_sets(parse_conditions(["synthetic:x/run", "synthetic-only:x/run"])) == {"run": "x/run"}
    with pytest.raises(ValueError, match="two folders"):
        parse_conditions(["synthetic:A=da", "synthetic-only:A=other"])


def test_gan_test_form_scores_a_copy_and_trains_nothing():
    c = parse_condition("gan-test:Reconstructions=cache/reconstructions/real_val-0123")
    assert (c.name, c.kind, c.set_name, c.trains, c.uses_synthetic) == (
        "Reconstructions",
        "gan-test",
        "Reconstructions",
        False,
        False,
    )
    assert parse_condition(c.spec()) == c
    assert synthetic_sets([parse_condition("geometric"), c]) == {"Reconstructions": c.sample_dir}
    assert parse_condition("geometric").trains
