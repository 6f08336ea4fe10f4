"""Check that a command line reaches the namespace its parser builds: every flag given lands in its destination."""

from __future__ import annotations

import argparse


def assert_flags_applied(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse `argv` and check each `--flag value...` against the namespace: the destination holds the value(s) as the
    flag's type converts them, a switch holds its constant. Returns the namespace.

    A renamed destination, a flag that swallows the wrong number of values, or a type that no longer converts would
    each change a value here, where a bare `parse_args` would still succeed.
    """
    args = parser.parse_args(argv)
    actions = parser._option_string_actions  # noqa: SLF001 - argparse has no public lookup by option string
    i = 0
    while i < len(argv):
        word = argv[i]
        name, eq, inline = word.partition("=")
        action = actions.get(name) if name.startswith("-") else None
        if action is None:
            i += 1
            continue
        if eq:
            values, i = [inline], i + 1
        else:
            j = i + 1
            while j < len(argv) and not (argv[j].startswith("--") and argv[j].split("=")[0] in actions):
                j += 1
            values, i = argv[i + 1 : j], j
        got = getattr(args, action.dest)
        convert = action.type or (lambda v: v)
        if isinstance(action, argparse.BooleanOptionalAction):
            assert got is (not name.startswith("--no-")), (word, got)
        elif action.nargs == 0:
            assert got == action.const, (word, got)
        elif action.nargs in ("+", "*") or isinstance(action.nargs, int):
            assert got == [convert(v) for v in values], (word, values, got)
        elif action.nargs == "?":
            assert got == (convert(values[0]) if values else action.const), (word, values, got)
        else:
            assert len(values) == 1 and got == convert(values[0]), (word, values, got)
    return args
