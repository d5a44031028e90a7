"""Signals held over a commit, and loader workers that end with their rank under every start method."""

import multiprocessing
import os
import signal
import sys

import pytest

from lposs.evaluation.interrupts import die_with_parent, signals_held
from lposs.outputs.lock import process_start_ticks


def test_signals_held_are_delivered_once_afterwards_in_order():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C
            done.append("the whole block ran")
    assert done == ["the whole block ran"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_loader_worker_lives_while_its_rank_does_under_every_start_method(method):
    """A worker (as DataLoader starts it) stays while its rank runs, and ends at once if the rank is gone."""
    context = multiprocessing.get_context(method)
    me = (os.getpid(), process_start_ticks(os.getpid()))
    gone = context.Process(target=os.getpid)
    gone.start()
    gone.join()
    results = {}
    for name, rank in (("alive", me), ("gone", (gone.pid, None))):
        worker = context.Process(target=die_with_parent, args=(*rank, 0))
        worker.start()
        worker.join(timeout=60)
        results[name] = worker.exitcode
    assert results == {"alive": 0, "gone": 1}
