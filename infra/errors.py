"""User mistakes end a script with one line, `<prog>: error: <message>`, and exit status 2 (the argparse convention);
our own bugs keep their traceback (docs/DECISIONS.md §C8).

Input checks raise `UserError` (a ValueError, so library callers may catch it as one), naming the flag, file or row.
Missing or unwritable files, a full disk and a diverged training run are the user's to fix too. Every entry point
runs its main function through `run_main`.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import Any

# Exit status of a user mistake, as argparse's parser.error.
USER_ERROR_STATUS = 2
# File-system errors caused by what the user gave or where they asked to write.
_USER_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


class UserError(ValueError):
    """A mistake in the user's input (a flag, a file, a CSV row, a checkpoint, a model that does not fit them)."""


def user_message(err: BaseException) -> str | None:
    """The one-line message of a user mistake, or None for anything else (a bug: keep the traceback)."""
    if isinstance(err, (UserError, FloatingPointError)):
        text = str(err)
    elif isinstance(err, _USER_OS_ERRORS):
        text = str(err) if err.filename is None else f"{err.strerror or err}: {err.filename}"
    elif isinstance(err, OSError) and err.errno == errno.ENOSPC:
        text = f"no space left on the device{'' if err.filename is None else f' writing {err.filename}'}"
    else:
        return None
    return " ".join(text.split())


def run_main(prog: str, main: Callable[[], Any]) -> Any:
    """Call `main()`; a user mistake prints `prog: error: ...` on stderr and exits with status 2."""
    try:
        return main()
    except Exception as err:  # noqa: BLE001 - re-raised unless it is a user mistake
        message = user_message(err)
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_STATUS)
