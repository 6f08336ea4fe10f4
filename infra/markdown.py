"""The project's one Markdown table writer and one byte formatter (reports, results.md, benchmark tables)."""

from __future__ import annotations

from collections.abc import Sequence


def _cell(value: object) -> str:
    """A value as a table cell: str(), with pipes escaped and line breaks flattened so the row stays one row."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[object], rows: Sequence[Sequence[object]], padded: bool = False) -> str:
    """A Markdown table of `rows` under `header`.

    Args:
        header: the column titles.
        rows: one sequence of cells per row (any values; str() is applied).
        padded: pad every column to its widest cell, for reading in a terminal (the same table to a renderer).
    """
    lines = [[_cell(c) for c in header], *([_cell(c) for c in row] for row in rows)]
    if not padded:
        rule = "|" + "---|" * len(header)
        return "\n".join(["| " + " | ".join(lines[0]) + " |", rule, *("| " + " | ".join(r) + " |" for r in lines[1:])])
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    padded_lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in lines]
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([padded_lines[0], rule, *padded_lines[1:]])


def format_bytes(num: float | None) -> str:
    """Bytes as MiB (whole) or GiB (two decimals); "n/a" for None or a non-positive count."""
    if num is None or num <= 0:
        return "n/a"
    return f"{num / 2**30:.2f} GiB" if num >= 2**30 else f"{num / 2**20:.0f} MiB"
