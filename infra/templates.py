"""Reports rendered from Markdown templates: the prose lives in `*.md` files beside the code that computes the values.

A template uses `string.Template` placeholders (`$name` or `${name}`; `$$` is a literal dollar sign). Rendering
substitutes every placeholder from a dict of computed strings and raises when one has no value, or when a value is
given that the template never uses, so a renamed field cannot silently drop a number from a report.
"""

from __future__ import annotations

import string
from pathlib import Path


class TemplateError(RuntimeError):
    """A template and its values do not match (our bug, not the user's)."""


def placeholders(text: str) -> set[str]:
    """The placeholder names a template uses."""
    names = set()
    for match in string.Template.pattern.finditer(text):
        name = match.group("named") or match.group("braced")
        if name:
            names.add(name)
    return names


def render(path: str | Path, values: dict[str, str]) -> str:
    """The template at `path` with every placeholder replaced by `values[name]`.

    Raises:
        TemplateError: a placeholder without a value, or a value without a placeholder.
    """
    text = Path(path).read_text()
    used = placeholders(text)
    missing, unused = sorted(used - values.keys()), sorted(values.keys() - used)
    if missing or unused:
        raise TemplateError(f"{path}: placeholders without a value {missing}, values without a placeholder {unused}")
    return string.Template(text).substitute(values)
