"""Output folders that no fault can leave half-written: where to stage and lock, the lock, the publish journal.

Standard library only, and importing nothing else of :mod:`lposs` but :mod:`lposs.files` (the floor below
:mod:`lposs.evaluation`, which stages and publishes a run's files with it):

- :mod:`lposs.outputs.place`: staging on the output's own file system (beside it, or inside a mount point);
- :mod:`lposs.outputs.lock`: one run per output folder (``flock``, or an exclusive create without it);
- :mod:`lposs.outputs.journal`: the publish's plan made durable first, and its one commit point;
- :mod:`lposs.outputs.checks`: every output folder probed before any work.
- :mod:`lposs.outputs.mounts`: whether ``flock`` there sees other hosts (not on NFS with ``local_lock``).
"""

from __future__ import annotations

from .checks import OutputLocationError, check_output_locations, check_staging
from .journal import Plan
from .lock import OutputInUse, OutputLock, lock_path
from .place import lock_files, resolved, staging_folders, staging_root

__all__ = [
    "OutputInUse",
    "OutputLocationError",
    "OutputLock",
    "Plan",
    "check_output_locations",
    "check_staging",
    "lock_files",
    "lock_path",
    "resolved",
    "staging_folders",
    "staging_root",
]
