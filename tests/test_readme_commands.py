"""Every entry-script command in the README and in docs/USAGE.md parses with that script's own parser."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from tests.helpers.flags import assert_flags_applied

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = (ROOT / "README.md", ROOT / "docs" / "USAGE.md")
SCRIPTS = ("extract_features", "train", "sample_ddp", "sample_ddp_val", "evaluate", "classify", "train_vae")


def readme_commands() -> list[tuple[str, list[str]]]:
    """(script, argv) of every `<launcher> script.py args...` command in the bash blocks of the documents."""
    text = "\n".join(d.read_text() for d in DOCUMENTS)
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            words = shlex.split(line) if line else []
            for i, word in enumerate(words):
                name = Path(word).stem
                if word.endswith(".py") and name in SCRIPTS:
                    found.append((name, words[i + 1 :]))
                    break
    return found


COMMANDS = readme_commands()


def test_readme_shows_every_script():
    assert {name for name, _ in COMMANDS} == set(SCRIPTS)


def test_readme_stays_short_and_links_what_it_moved():
    """The README is an entry point (at most 250 lines); the details live in docs/, linked from it."""
    readme = DOCUMENTS[0].read_text()
    assert len(readme.splitlines()) <= 250
    for target in ("docs/USAGE.md", "docs/DEMO.md", "docs/STUDY.md", "docs/PERFORMANCE.md", "docs/DEVIATIONS.md"):
        assert f"]({target})" in readme and (ROOT / target).is_file(), target


@pytest.mark.parametrize(("script", "argv"), COMMANDS, ids=[f"{s}-{i}" for i, (s, _) in enumerate(COMMANDS)])
def test_readme_command_parses(script, argv):
    module = importlib.import_module(script)
    assert_flags_applied(module.build_parser(), argv)
