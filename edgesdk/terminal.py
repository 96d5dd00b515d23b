"""edgesdk's own terminal: its progress and results on the terminal, everything else in a log.

Libraries under a conversion write to the terminal in many ways: Python warnings, their own
loggers, progress bars, and native code (C++ runtimes) writing straight to file descriptors 1
and 2. ``own_terminal`` points descriptors 1 and 2 at a log file for the duration and gives
edgesdk streams on the real terminal (``out()`` and ``err()``), so a conversion prints
edgesdk's lines alone; ``--verbose`` leaves everything on the terminal.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

__all__ = ["own_terminal", "out", "err", "LOGGER"]

LOGGER = logging.getLogger("edgesdk")
_streams: dict[str, TextIO] = {}


def out() -> TextIO:
    """Where edgesdk prints results (the terminal's stdout)."""
    return _streams.get("out", sys.stdout)


def err() -> TextIO:
    """Where edgesdk prints progress and errors (the terminal's stderr)."""
    return _streams.get("err", sys.stderr)


@contextmanager
def own_terminal(verbose: bool) -> Iterator[Path | None]:
    """Yields the log file that catches other libraries' output (None with ``verbose``).

    The log is deleted on a clean exit and kept, for the error message to name, when the
    block raises.
    """
    handler = logging.StreamHandler(err())
    handler.setFormatter(logging.Formatter("edgesdk: %(levelname)s: %(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.DEBUG if verbose else logging.WARNING)
    LOGGER.propagate = False
    if verbose:
        try:
            yield None
        finally:
            LOGGER.removeHandler(handler)
        return
    fd, name = tempfile.mkstemp(prefix="edgesdk-", suffix=".log")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    _streams["out"] = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    _streams["err"] = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    handler.setStream(_streams["err"])
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    clean = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # to the log, where a reader looking for them will find them
            yield Path(name)
        clean = True
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)
        for stream in (_streams.pop("out"), _streams.pop("err")):
            stream.close()
        LOGGER.removeHandler(handler)
        if clean:
            os.unlink(name)
