"""Runs in processes forked from the test process: they share its imported modules and built models, so a child
costs no interpreter start-up (a fresh ``python`` imports torch, mmseg and open_clip for seconds)."""

import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch


def forked(function, log):
    """Start ``function()`` in a forked child whose output goes to the file ``log``; its PID. The child exits with
    what ``function`` returns (99 on an exception) and never returns into pytest."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            sys.stdout = sys.stderr = open(log, "w", buffering=1)
            _follow_stderr()
            torch.set_num_threads(1)  # the parent's OpenMP threads are not in the child
            code = function()
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    return pid


def _follow_stderr() -> None:
    """Loggers' stream handlers (mmseg's among them) keep the stderr of the test that made them, a closed capture by
    now: in the child they write to its own stderr."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler:
                handler.stream = sys.stderr  # not setStream: it flushes the closed one


def exit_codes(pids, seconds=300):
    """Wait for the children; their exit codes (-N: killed by signal N). Kills them all after ``seconds``."""
    deadline, codes = time.monotonic() + seconds, {}
    while len(codes) < len(pids) and time.monotonic() < deadline:
        for pid in pids:
            if pid not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    for pid in set(pids) - set(codes):
        os.kill(pid, signal.SIGKILL)
        codes[pid] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return [codes[pid] for pid in pids]


class ForkedRun:
    """``main_eval.main(argv)`` in a forked child, ``env`` added to its environment; what ``subprocess.Popen`` offers
    the fault tests: ``pid``, ``send_signal``, ``wait``, ``kill``, ``returncode`` and its stdout and stderr (one log).

    ``before()`` runs in the child first (to plant a fault: a patched method, a signal to itself).
    """

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None, before: Callable | None = None):
        from lposs.cli import main_eval

        def child() -> int:
            os.environ.update(env or {})
            if before is not None:
                before()
            return main_eval.main(main_eval.parse_args(argv))

        self.log, self.returncode = log, None
        self.pid = forked(child, log)

    def send_signal(self, number: int) -> None:
        os.kill(self.pid, number)

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float = 300) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"forked run {self.pid} still running after {timeout} s")
            time.sleep(0.05)
        return self.returncode

    def communicate(self, timeout: float = 300) -> tuple[str, str]:
        """Wait for the child; ``("", its output)`` (stdout and stderr share the log)."""
        self.wait(timeout)
        return "", self.log.read_text()

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
