"""Reports rendered from Markdown templates: the prose lives in `*.md` files beside the code that computes the values.

A template uses `string.Template` placeholders (`$name` or `${name}`; `$$` is a literal dollar sign). Rendering
substitutes every placeholder from a dict of computed strings and raises when one has no value, or when a value is
given that the template never uses, so a renamed field cannot silently drop a number from a report.

A template file is a sequence of named blocks (`render_block`: a report's document, its sections, its alternative
sentences), each starting with a line `<!-- block: NAME -->` and running to the next such line; a block's last line
break is not part of it.
`fill_block` renders a block from keyword values plus whatever else it names from dicts of fields (a profile, a config).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

BLOCK_MARK = re.compile(r"^<!-- block: ([A-Za-z0-9_-]+) -->\n", re.M)


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


def _substitute(text: str, values: dict[str, str], where: str) -> str:
    used = placeholders(text)
    missing, unused = sorted(used - values.keys()), sorted(values.keys() - used)
    if missing or unused:
        raise TemplateError(f"{where}: placeholders without a value {missing}, values without a placeholder {unused}")
    return string.Template(text).substitute(values)


@cache
def blocks(path: Path) -> dict[str, str]:
    """{name: text} of a block template file (read once per process)."""
    text = Path(path).read_text()
    marks = list(BLOCK_MARK.finditer(text))
    if not marks or text[: marks[0].start()].strip():
        raise TemplateError(f"{path}: a block template starts with a '<!-- block: NAME -->' line")
    found = {}
    for mark, nxt in zip(marks, [*marks[1:], None]):
        body = text[mark.end() : nxt.start() if nxt else len(text)]
        found[mark.group(1)] = body[:-1] if body.endswith("\n") else body
    return found


def render_block(path: str | Path, name: str, values: dict[str, str]) -> str:
    """Block `name` of the block template file at `path` with every placeholder replaced by `values[name]`.

    Raises:
        TemplateError: a placeholder without a value, or a value without a placeholder.
    """
    return _substitute(blocks(Path(path))[name], values, f"{path}, block {name}")


def template_values(names: set[str], sources: Sequence[Mapping], values: Mapping[str, object]) -> dict[str, str]:
    """str() of `values`, plus each placeholder of `names` they lack from the first of `sources` (a profile's
    fields, a run's config) that has it."""
    found = {n: next(s[n] for s in sources if n in s) for n in names - values.keys() if any(n in s for s in sources)}
    return {k: str(v) for k, v in {**found, **values}.items()}


def fill_block(path: str | Path, name: str, /, *sources: Mapping, **values: object) -> str:
    """Block `name` of the block template file at `path` with `values` filled in, and what else it names from
    `sources` (see `template_values`); raises as `render_block` does."""
    return render_block(path, name, template_values(placeholders(blocks(Path(path))[name]), sources, values))
