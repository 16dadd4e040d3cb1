"""What the offline-command tests share: a command run in-process with its output captured."""

from __future__ import annotations

import contextlib
import io

from tokrl.cli import main


def cli(argv: list[str]) -> tuple[int, str, str]:
    """``tokrl argv``: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()
