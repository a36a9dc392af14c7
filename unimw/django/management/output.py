"""The CLI's printed output inside a management command, byte for byte."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django.core.management.base import BaseCommand


@contextlib.contextmanager
def printed_to(command: BaseCommand) -> Iterator[None]:
    """Send ``print`` to ``command``'s stdout and stderr, so ``call_command(stdout=...)`` captures it.

    Their wrappers end every write with a newline, and ``print`` writes its
    text and its newline apart, which would double each line: the ending is
    off while the CLI prints.
    """
    out, err = command.stdout, command.stderr
    endings = out.ending, err.ending
    out.ending = err.ending = ""
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):  # type: ignore[type-var]
            yield
    finally:
        out.ending, err.ending = endings
