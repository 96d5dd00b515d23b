"""Progress on stderr with rich: a spinner per step, then one line with its duration."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console

from . import terminal

__all__ = ["Steps"]


class Steps:
    """Shows each step while it runs and logs it when done (silent when ``quiet``)."""

    def __init__(self, quiet: bool = False) -> None:
        self.console = Console(file=terminal.err(), quiet=quiet, highlight=False)

    @contextmanager
    def step(self, what: str, mark: bool = True) -> Iterator[Callable[[str], None]]:
        """Yields ``update(detail)``, which shows live progress beside the step's name. Without
        ``mark`` a step that ends well prints nothing (its caller says how it went)."""
        start = time.perf_counter()
        with self.console.status(what) as status:
            try:
                yield lambda detail: status.update(f"{what}: {detail}")
            except BaseException:
                self.console.print(f"[red]✗[/] {what} ({time.perf_counter() - start:.1f} s)")
                raise
        if mark:
            self.console.print(f"[green]✓[/] {what} ({time.perf_counter() - start:.1f} s)")

    def note(self, text: str) -> None:
        self.console.print(text)
