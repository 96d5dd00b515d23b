"""SIGINT and SIGTERM for the CLI: they stop a conversion even when a library swallows the
exception they raise on the way (a conversion checks before it commits its output)."""

from __future__ import annotations

import signal

__all__ = ["install", "received", "check"]

_received: list[int] = []


def _handler(signum: int, frame: object) -> None:
    _received.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def install() -> None:
    """Handle SIGINT (exit 130) and SIGTERM (exit 143) from here on."""
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def received() -> int | None:
    """The first interrupting signal received, or None."""
    return _received[0] if _received else None


def check() -> None:
    """Raise again for an interrupt that arrived but did not stop the work."""
    if _received:
        raise KeyboardInterrupt if _received[0] == signal.SIGINT else SystemExit(128 + _received[0])
