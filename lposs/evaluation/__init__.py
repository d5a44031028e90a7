"""The evaluation run: configs, the loop over a dataset, metrics, sweeps, staged outputs and reports.

It stands on the method (:mod:`segmentation`), on :mod:`models`, :mod:`datasets` and :mod:`outputs`; the entry points
(``main_eval.py``, ``tools/``) stand on it. One job per module:

- :mod:`evaluation.config`, :mod:`evaluation.config_schema`: YAML configs composed with ``key=value`` overrides,
  typed and range-checked; sweep grids;
- :mod:`evaluation.loop`: one pass over a dataset (data loading, segmenting, counting, prediction files);
- :mod:`evaluation.metrics`: IoU and Boundary IoU counts, summed over images and ranks, and their tables;
- :mod:`evaluation.sweep`: settings grouped by what the backbones see, the sweep tables;
- :mod:`evaluation.shared_passes`: datasets grouped into passes by the images they list;
- :mod:`evaluation.runner`: pre-flight checks, then datasets x settings, then the published results;
- :mod:`evaluation.run_output`, :mod:`evaluation.reporting`: staged folders published all or nothing with one
  commit point (:mod:`lposs.outputs`: where to stage and lock, the journal), atomic writes, JSON records;
- :mod:`evaluation.output_recovery`: output folders locked, and what dead runs left in them finished or undone;
- :mod:`evaluation.distributed`, :mod:`evaluation.interrupts`: a dead or stalled rank named within
  ``dist_timeout``, SIGTERM handled like Ctrl-C, signals held over a commit, loader workers that end with
  their rank;
- :mod:`evaluation.visualise`: palettes and overlays;
- :mod:`evaluation.folder_plan`, :mod:`evaluation.folder_run`: label maps for a folder of unlabelled images
  (``segment_folder``), checked first, resumable, one share per rank.

Names are imported on first use, so that ``from lposs.evaluation.config import load_config`` does not pull in
mmsegmentation through the data loading of the loop.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ConfigError",
    "boundary_iou_counts",
    "evaluate",
    "evaluate_pass",
    "evaluate_settings",
    "iou_counts",
    "load_config",
    "preflight",
    "run",
    "segment_folder",
    "summarize",
]

_HOMES = {
    "ConfigError": "config",
    "load_config": "config",
    "evaluate": "loop",
    "evaluate_pass": "loop",
    "evaluate_settings": "loop",
    "boundary_iou_counts": "metrics",
    "iou_counts": "metrics",
    "summarize": "metrics",
    "preflight": "runner",
    "run": "runner",
    "segment_folder": "folder_run",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
