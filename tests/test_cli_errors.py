"""The one top-level handler of the command lines (mlip/cli.py): one stderr line, exit status."""

from __future__ import annotations

import os

import pytest

from mlip.cli import CLIError, check_outputs, run_cli


def _raise(exc: BaseException):
    def body(argv):
        raise exc

    return body


@pytest.mark.parametrize(
    ("exc", "status", "line"),
    [
        (CLIError("bad thing\nhappened"), 1, "prog: error: bad thing happened"),
        (CLIError("stopped", exit_code=130), 130, "prog: error: stopped"),
        (
            PermissionError(13, "Permission denied", "out/x.csv"),
            1,
            "prog: error: out/x.csv: Permission denied",
        ),
        (
            ValueError("atoms 0 and 1 are 0.01 Å apart"),
            1,
            "prog: error: atoms 0 and 1 are 0.01 Å apart",
        ),
        (KeyboardInterrupt(), 130, "prog: error: interrupted"),
    ],
)
def test_errors_become_one_line(capsys, monkeypatch, exc, status, line):
    monkeypatch.delenv("MLIP_TRACEBACK", raising=False)
    assert run_cli("prog", _raise(exc), []) == status
    err = capsys.readouterr().err
    assert err == line + "\n"


def test_traceback_on_request(monkeypatch):
    monkeypatch.setenv("MLIP_TRACEBACK", "1")
    with pytest.raises(ValueError):
        run_cli("prog", _raise(ValueError("x")), [])


def test_unexpected_errors_keep_their_traceback():
    with pytest.raises(ZeroDivisionError):  # a bug, not bad input
        run_cli("prog", _raise(ZeroDivisionError()), [])


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any directory")
def test_non_writable_directory_is_found_before_work(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(CLIError, match="its directory is not writable"):
            check_outputs([locked / "out.extxyz"], overwrite=False)
    finally:
        locked.chmod(0o700)
