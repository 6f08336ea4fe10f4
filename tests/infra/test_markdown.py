"""infra/markdown.py: the one table writer (plain and padded) and the byte formatter."""

from __future__ import annotations

from infra.markdown import format_bytes, markdown_table


def test_plain_table_escapes_what_would_break_a_row():
    text = markdown_table(["a", "b"], [[1, "x|y"], ["two\nlines", 2.5]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |", "| two lines | 2.5 |"]


def test_padded_table_aligns_columns_to_the_widest_cell():
    lines = markdown_table(["name", "v"], [["long name", "1"], ["x", "22"]], padded=True).splitlines()
    assert lines == ["| name      | v  |", "|-----------|----|", "| long name | 1  |", "| x         | 22 |"]
    assert len({len(line) for line in lines}) == 1


def test_format_bytes():
    assert format_bytes(3 * 2**20) == "3 MiB" and format_bytes(2**30 * 1.5) == "1.50 GiB"
    assert format_bytes(None) == format_bytes(0) == "n/a"
