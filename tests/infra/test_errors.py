"""infra.errors: which exceptions are the user's (one line, exit 2) and which are ours (traceback)."""

from __future__ import annotations

import errno

import pytest

from infra.errors import USER_ERROR_STATUS, UserError, run_main, user_message


def test_user_mistakes_become_one_line(capsys):
    def bad_flag():
        raise UserError("--lr must be positive,\n  got -1")

    with pytest.raises(SystemExit) as stop:
        run_main("train.py", bad_flag)
    assert stop.value.code == USER_ERROR_STATUS == 2
    assert capsys.readouterr().err == "train.py: error: --lr must be positive, got -1\n"


def test_file_system_and_full_disk_messages_name_the_file():
    assert user_message(FileNotFoundError(errno.ENOENT, "No such file or directory", "a/b.csv")) == (
        "No such file or directory: a/b.csv"
    )
    full = OSError(errno.ENOSPC, "No space left on device", "out/last.pt")
    assert user_message(full) == "no space left on the device writing out/last.pt"
    assert user_message(FloatingPointError("non-finite loss at step 3")) == "non-finite loss at step 3"


@pytest.mark.parametrize("bug", [KeyError("x"), TypeError("bad call"), RuntimeError("boom"), OSError(errno.EIO, "io")])
def test_our_bugs_keep_their_traceback(bug):
    def broken():
        raise bug

    assert user_message(bug) is None
    with pytest.raises(type(bug)):
        run_main("train.py", broken)


def test_a_user_error_is_still_a_value_error_for_library_callers():
    assert issubclass(UserError, ValueError)
    assert run_main("x", lambda: 7) == 7
