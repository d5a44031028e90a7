"""Whether ``flock`` on a folder can see other hosts' locks: not on NFS mounted with ``local_lock``.

A working ``flock`` is what lets a run take every staging folder of its output for stale (their owners held the
same lock). On NFS that holds only when locks go to the server: mounted with ``local_lock=flock`` or
``local_lock=all`` (also ``nolock``, which implies ``local_lock=all``), ``flock`` succeeds on every host at once.
The mount table (``/proc/self/mountinfo``, else ``/proc/mounts``) tells which mount a folder is on and its
options; where it cannot be read, nothing is known and nothing is claimed.

Standard library only.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["MOUNT_TABLES", "local_flock"]

MOUNT_TABLES = ("/proc/self/mountinfo", "/proc/mounts")  # tried in order
_ESCAPED = re.compile(r"\\([0-7]{3})")  # the kernel writes a space in a mount point as \040


def _unescape(field: str) -> str:
    return _ESCAPED.sub(lambda match: chr(int(match.group(1), 8)), field)


def _mounts(table: str) -> list[tuple[str, str, list[str]]]:
    """``(mount point, file system type, options)`` of each line of a mount table, in its order."""
    mounts = []
    with open(table) as lines:
        for line in lines:
            fields = line.split()
            if " - " in line:  # mountinfo: ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER
                head, _, tail = line.partition(" - ")
                fields, rest = head.split(), tail.split()
                if len(fields) >= 6 and len(rest) >= 1:
                    options = fields[5].split(",") + (rest[2].split(",") if len(rest) > 2 else [])
                    mounts.append((_unescape(fields[4]), rest[0], options))
            elif len(fields) >= 4:  # /proc/mounts: SOURCE POINT TYPE OPTIONS DUMP PASS
                mounts.append((_unescape(fields[1]), fields[2], fields[3].split(",")))
    return mounts


def local_flock(folder: Path | str) -> str | None:
    """Why ``flock`` under ``folder`` (resolved) cannot see other hosts, or None (it can, or nothing is known).

    Example: ``"the nfs4 mount /scratch has local_lock=flock"``.
    """
    folder = Path(folder).resolve()
    for table in MOUNT_TABLES:
        try:
            mounts = _mounts(table)
        except OSError:
            continue
        best = None
        for point, kind, options in mounts:  # the deepest mount point holding the folder; the later on a tie
            if (folder == Path(point) or Path(point) in folder.parents) and (
                best is None or len(Path(point).parts) >= len(Path(best[0]).parts)
            ):
                best = (point, kind, options)
        if best is None or not best[1].startswith("nfs"):
            return None
        point, kind, options = best
        local = [option.partition("=")[2] for option in options if option.startswith("local_lock=")]
        if "nolock" in options and not local:
            local = ["all"]
        if local and local[-1] in ("flock", "all"):
            return f"the {kind} mount {point} has local_lock={local[-1]}"
        return None
    return None
