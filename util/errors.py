"""Bad input: one exception type for every reader, one line and exit status 2 in every CLI.

Readers raise :class:`InputError` (or one of its subclasses: ``MaskReadError``,
``FrameSourceError``, ``DatasetError``, ``CheckpointError``, ...) when a file given to the
program is missing, unreadable or inconsistent. The message names the file and says what is
wrong with it. Every command-line entry point catches it and reports it with
:func:`error_line` as ``error: <file>: <problem>`` on stderr, with exit status
:data:`EXIT_BAD_INPUT` (2), instead of a traceback.

This module is dependency-free (``util`` is the bottom layer of the code base).
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """A file given to the program is missing, unreadable or inconsistent.

    Args:
        message: what is wrong (may already name the file).
        path: the file or folder concerned, when known.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)


class MissingInputError(InputError, FileNotFoundError):
    """A file or folder the program needs does not exist (also a ``FileNotFoundError``)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        InputError.__init__(self, message, path)


class OutputPathError(InputError, NotADirectoryError):
    """An output folder cannot be created because the path is taken by a file."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        InputError.__init__(self, message, path)


def error_line(exc: BaseException) -> str:
    """``error: <file>: <problem>`` on one line.

    The first line of the exception's message is used (details on further lines are for the
    logs); the file is put in front when the message does not name it already.
    """
    text = str(exc).strip()
    first = text.splitlines()[0].strip() if text else type(exc).__name__
    path = getattr(exc, "path", None) or getattr(exc, "filename", None)
    if path is not None and os.fspath(path) not in first:
        first = f"{os.fspath(path)}: {first}"
    return f"error: {first}"


def report(exc: BaseException, file: TextIO | None = None) -> int:
    """Print :func:`error_line` of ``exc`` to ``file`` (stderr) and return :data:`EXIT_BAD_INPUT`."""
    print(error_line(exc), file=file if file is not None else sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def require_output_dir(path: str | os.PathLike, flag: str = "--output") -> None:
    """Fail with :class:`OutputPathError` when ``path`` (or one of its parents) is a file."""
    p = os.path.abspath(os.fspath(path))
    while True:
        if os.path.exists(p):
            if not os.path.isdir(p):
                given = os.fspath(path)
                where = "is a file" if p == os.path.abspath(given) else f"lies under the file {p}"
                raise OutputPathError(f"{given}: output folder ({flag}) {where}, not a folder", path)
            return
        parent = os.path.dirname(p)
        if parent == p:
            return
        p = parent
