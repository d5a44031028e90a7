"""torch.distributed with a bounded wait: a dead or stalled rank ends the others within ``dist_timeout``.

Ranks share nothing until the end of each dataset pass, where their counts are summed; they legitimately get
there minutes apart (shares of images of different sizes, rank 0 also writing overlays). Before each
collective every rank checks in (:func:`check_peers`): a key in the rendezvous store, then a monitored barrier
on a CPU (gloo) group. When a rank does not arrive within ``dist_timeout`` seconds, or its connection closes
because it died, the others raise :class:`PeerFailure` naming it; the timeout also bounds the collective itself
(``init_process_group(timeout=...)``).
"""

from __future__ import annotations

import datetime
import itertools
import re

import torch.distributed as dist

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "PeerFailure",
    "check_peers",
    "collective_timeout",
    "init_process_group",
    "set_collective_timeout",
]

DEFAULT_TIMEOUT_S = 600.0  # configs/lposs.yaml's dist_timeout; torch's own default is 30 minutes
_STORE_TIMEOUT = datetime.timedelta(seconds=10)  # asking the store which ranks checked in, after a failure
_state = {"timeout": datetime.timedelta(seconds=DEFAULT_TIMEOUT_S), "monitor": None}
_checks = itertools.count(1)


class PeerFailure(RuntimeError):
    """Another rank died or stopped answering (one line naming it)."""


def set_collective_timeout(seconds: float) -> None:
    """How long a rank waits for the others at a collective (``dist_timeout``), before the group is made."""
    _state["timeout"] = datetime.timedelta(seconds=float(seconds))


def collective_timeout() -> float:
    """``dist_timeout`` in seconds: how long a rank waits for another that shows no sign of life."""
    return _state["timeout"].total_seconds()


def init_process_group(backend: str) -> None:
    """``dist.init_process_group`` with the collective timeout, plus a gloo group for :func:`check_peers`."""
    dist.init_process_group(backend=backend, timeout=_state["timeout"])
    # monitored_barrier exists for gloo only: NCCL runs check in over a CPU group of their own
    _state["monitor"] = None if backend == "gloo" else dist.new_group(backend="gloo", timeout=_state["timeout"])


def _missing_ranks(check: int) -> list[int] | None:
    """Ranks that have not checked in to ``check``; None when the store does not answer (its host is gone)."""
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(_STORE_TIMEOUT)
        return [r for r in range(dist.get_world_size()) if not store.check([f"lposs/check{check}/{r}"])]
    except Exception:  # a private API, or a store that went with its host: say what is known
        return None


def check_peers() -> None:
    """Wait (at most ``dist_timeout``) until every rank is here; no-op without torch.distributed.

    Raises:
        PeerFailure: a rank died or did not arrive in time; the message names it when the store can tell.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    check = next(_checks)
    rank, timeout = dist.get_rank(), _state["timeout"]
    try:
        dist.distributed_c10d._get_default_store().set(f"lposs/check{check}/{rank}", "1")
    except Exception:
        pass  # the barrier below still bounds the wait
    try:
        dist.monitored_barrier(group=_state["monitor"], timeout=timeout, wait_all_ranks=True)
    except RuntimeError as error:
        missing = _missing_ranks(check)
        seconds = f"{timeout.total_seconds():g}"
        if missing is None:
            who = "rank 0 (which holds the rendezvous store) is gone" if rank else "a rank is gone"
        elif missing:
            who = f"rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} did not arrive"
        else:
            who = "a rank broke its connection"
        reason = re.sub(r"^\[[^\]]*\]:?\s*", "", (str(error).splitlines() or [""])[0]).split(". ")[0]
        raise PeerFailure(f"rank {rank}: {who} within dist_timeout={seconds} s (died or stalled: {reason})") from None
