"""Signals and process lifetime: SIGTERM handled like Ctrl-C, signals held over a commit, loader workers' end.

- :func:`sigterm_raises`: SIGTERM raised as :class:`Terminated` in the main thread, so that the run unwinds
  (staging removed, a publish in progress rolled back, loader workers shut down) as for ``KeyboardInterrupt``;
  ``main_eval.py`` then prints one line and exits 143 (128 + SIGTERM). torchrun sends SIGTERM to the other
  ranks when one fails, and batch schedulers send it before SIGKILL.
- :func:`signals_held`: while a publish commits or rolls back, SIGINT and SIGTERM (a second Ctrl-C included)
  are only recorded, and delivered once it is done: a half-undone publish would lose earlier files.
- :func:`die_with_parent`: a loader worker that ends with its rank, however the rank ends.

Standard library only: loader workers started by ``spawn`` or ``forkserver`` import this module.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from lposs.outputs.lock import process_alive, process_start_ticks

__all__ = ["Terminated", "die_with_parent", "loader_worker_init", "signals_held", "sigterm_raises"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Terminated(BaseException):
    """The process received SIGTERM (a BaseException, like KeyboardInterrupt: ``except Exception`` lets it by)."""


def _raise_terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise Terminated()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`; the previous handler is restored afterwards.

    A no-op outside the main thread (Python delivers signals there only) and where SIGTERM is unknown.
    """
    if not _in_main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def signals_held() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM are only recorded; afterwards each is delivered once, in order.

    Handlers, not a signal mask: the kernel may hand a process-directed signal to any thread (OpenMP, gloo,
    loader pin threads) and Python then runs its handler in the main thread, which a mask on the main thread
    alone does not stop. Outside the main thread (where handlers cannot be set) a no-op.
    """
    wanted = [s for s in ("SIGINT", "SIGTERM") if hasattr(signal, s)]
    if not _in_main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {getattr(signal, s): signal.signal(getattr(signal, s), lambda n, f: arrived.append(n)) for s in wanted}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(arrived):
            signal.raise_signal(number)  # the run's own handler now: KeyboardInterrupt, Terminated, or the default


def die_with_parent(rank_pid: int, rank_start: int | None, worker_id: int) -> None:
    """Loader worker start: ask Linux to SIGKILL this worker when its parent dies, however it dies.

    Without it, workers of a killed rank live on, blocked writing to a pipe nobody reads, and keep the rank's
    sockets open (its peers then wait instead of seeing the connection close). The parent is the rank under
    ``fork`` and ``spawn``, the forkserver under ``forkserver`` (which exits when its rank does). A rank that
    died before the signal was armed is caught by asking whether ``rank_pid`` (started at ``rank_start``,
    ``/proc`` ticks) still runs: the worker's parent PID would not tell, as it is the forkserver's. Elsewhere
    than Linux a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if not process_alive(rank_pid, rank_start):
        os._exit(1)


def loader_worker_init() -> functools.partial:
    """A DataLoader ``worker_init_fn`` for this process's workers: :func:`die_with_parent` of this rank."""
    return functools.partial(die_with_parent, os.getpid(), process_start_ticks(os.getpid()))
