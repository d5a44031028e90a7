"""Tasks handed to ranks as they become free, and a wait for the others that lasts as long as they make progress.

A folder run (:mod:`lposs.evaluation.folder_run`) does not fix each rank's share in advance: a rank that is
ready for more takes the next ``n`` tasks from an atomic counter in torchrun's own key-value store
(``store.add``: the c10d store of the process group; one process uses an in-memory store, the same code path).
A fast node then does more of the work, and no rank idles while another holds a queue.

Each rank counts what it has done in the store too (its heartbeat). A rank out of tasks waits for the others by
polling the store: it waits as long as each unfinished rank's count keeps moving, and raises
:class:`~lposs.evaluation.distributed.PeerFailure` naming the rank whose count has not moved for ``dist_timeout``
seconds (dead or stalled). So a live rank that finishes long after the others is waited for, however long, and a
dead one ends the run ``dist_timeout`` after its last progress (one task that alone takes longer than
``dist_timeout`` counts as a stall: raise ``dist_timeout`` for such tasks).
"""

from __future__ import annotations

import itertools
import time

import torch.distributed as dist

from .distributed import PeerFailure, collective_timeout

__all__ = ["WorkQueue"]

_POLL_S = 0.2  # how often a waiting rank reads the others' counts (a few small store reads each time)
_queues = itertools.count()  # every rank makes its queues in the same order: equal names on every rank


class WorkQueue:
    """Positions ``0 .. total - 1`` handed out in claims of consecutive positions, over all ranks."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.distributed = dist.is_available() and dist.is_initialized()
        if self.distributed:
            self.store = dist.distributed_c10d._get_default_store()
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.store, self.rank, self.world = dist.HashStore(), 0, 1
        self.prefix = f"lposs/queue{next(_queues)}/"

    def _call(self, method: str, *args: object) -> object:
        """A store call; a store that stopped answering (its host is gone) is a :class:`PeerFailure`."""
        try:
            return getattr(self.store, method)(*args)
        except Exception as error:  # the c10d store raises DistStoreError, RuntimeError or OSError alike
            who = "rank 0 (which holds the rendezvous store) is gone" if self.rank else "the rendezvous store failed"
            reason = (str(error).splitlines() or [""])[0]
            raise PeerFailure(f"rank {self.rank}: {who} ({type(error).__name__}: {reason})") from None

    def claim(self, count: int) -> range:
        """The next ``count`` positions (fewer at the end; empty once all are handed out)."""
        end = int(self._call("add", self.prefix + "next", count))
        self.advance(0)  # asking for work is progress too
        return range(min(end - count, self.total), min(end, self.total))

    def advance(self, count: int) -> int:
        """Count ``count`` more tasks done by this rank (its heartbeat); the tasks done by all ranks so far."""
        self._call("add", f"{self.prefix}beat/{self.rank}", 1 + count)  # +1: moves even when nothing is done
        return int(self._call("add", self.prefix + "done", count))

    def abandon(self) -> None:
        """Tell the other ranks that this one stopped on an error: they stop waiting for it at once."""
        try:
            self.store.set(f"{self.prefix}failed/{self.rank}", "1")
        except Exception:
            pass  # the store is gone too: the others find that out themselves

    def wait_for_all(self) -> None:
        """Mark this rank finished and wait for the others, as long as each keeps making progress.

        Raises:
            PeerFailure: a rank's heartbeat did not move for ``dist_timeout`` seconds, or it stopped on an error
                (naming it), or the store is gone.
        """
        self._call("set", f"{self.prefix}finished/{self.rank}", "1")
        if self.world == 1:
            return
        timeout = collective_timeout()
        now = time.monotonic()
        seen = {rank: (None, now) for rank in range(self.world) if rank != self.rank}
        while seen:
            for rank, (beat, since) in list(seen.items()):
                if self._call("check", [f"{self.prefix}finished/{rank}"]):
                    del seen[rank]
                    continue
                if self._call("check", [f"{self.prefix}failed/{rank}"]):
                    raise PeerFailure(f"rank {self.rank}: rank {rank} stopped on an error (its log says which)")
                now_beat = int(self._call("add", f"{self.prefix}beat/{rank}", 0))
                if now_beat != beat:
                    seen[rank] = (now_beat, time.monotonic())
                elif time.monotonic() - since > timeout:
                    raise PeerFailure(
                        f"rank {self.rank}: rank {rank} made no progress within dist_timeout={timeout:g} s "
                        "(died or stalled while the others had finished)"
                    )
            time.sleep(_POLL_S)
