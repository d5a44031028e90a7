"""SIGTERM handled like Ctrl-C: raised as :class:`Terminated` in the main thread, so that the run unwinds.

Unwinding removes the staging folders, rolls back a publish in progress and shuts the loader workers down,
as for ``KeyboardInterrupt``; ``main_eval.py`` then prints one line and exits 143 (128 + SIGTERM). torchrun
sends SIGTERM to the other ranks when one fails, and batch schedulers send it before SIGKILL.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Terminated", "sigterm_raises"]


class Terminated(BaseException):
    """The process received SIGTERM (a BaseException, like KeyboardInterrupt: ``except Exception`` lets it by)."""


def _raise_terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise Terminated()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`; the previous handler is restored afterwards.

    A no-op outside the main thread (Python delivers signals there only) and where SIGTERM is unknown.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
