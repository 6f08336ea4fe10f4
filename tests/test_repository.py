"""The repository stands on its own: nothing it tracks points at documents that are not part of it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Written in pieces so that this file does not match itself.
OUTSIDE_PATH = "../" + "shared"
# A citation of the project's former planning documents (a section of the spec or of the style guide) instead of docs/.
OUTSIDE_CITATION = re.compile(r"\b(" + "SP" + "EC|" + "ST" + r"YLE)\b(\s+(Part\s+)?[A-C]?\s?\d|\.md|'s)")


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    files = []
    for name in names:
        path = REPO / name
        if path.is_file() and path.suffix in {".py", ".md", ".txt", ".toml", ".cfg", ".yml", ".yaml", ""}:
            files.append(path)
    return files


def test_no_tracked_file_cites_documents_outside_the_repository():
    offenders = []
    for path in tracked_text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE_PATH in line or OUTSIDE_CITATION.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert not offenders, "cite docs/ or the paper instead:\n" + "\n".join(offenders[:40])


def test_the_citation_rule_catches_the_forms_it_is_meant_for():
    for text in ("see " + "SP" + "EC A 4.3", "(" + "SP" + "EC C2.9)", "SP" + "EC 3.2", "ST" + "YLE 11"):
        assert OUTSIDE_CITATION.search(text), text
    for text in ("docs/REFERENCE.md §4.3", "the spec of the format", "SP" + "ECIAL 3"):
        assert not OUTSIDE_CITATION.search(text), text


def test_every_mutant_edit_finds_its_code_once():
    """`make mutants` replaces an exact piece of code per entry; a refactor that moves or re-indents it would stop the
    run (and the edit would test nothing), so the catalogue is checked against the code here, in milliseconds."""
    from mutants.catalogue import MUTANTS

    counts = {m.name: (REPO / m.path).read_text().count(m.old) for m in MUTANTS}
    assert counts == dict.fromkeys(counts, 1)
