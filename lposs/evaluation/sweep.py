"""Parameter sweeps: the grid of settings, which settings can share backbone features, and the sweep table.

A sweep is written with Hydra's multirun comma syntax (``k=100,200,400 alpha=0.9,0.95``); every combination
is one full config. Combinations that differ only in settings applied after the backbones (the graph, the
propagation, ``pixel_refine``: see :data:`PROPAGATION_KEYS`) form one group and share one encoding of every
image; anything else that varies (``crop``, ``stride``, ``short_side``, ``long_side``, ``model.*``, ...) starts
a new group.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lposs.segmentation.segmentor import ENCODING_FIELDS, SegmentorSettings

from .config import ConfigError, expand_sweep, load_config, sweep_parameters
from .reporting import column_name

__all__ = [
    "PROPAGATION_KEYS",
    "Combination",
    "dataset_change",
    "format_sweep_tables",
    "group_by_encoding",
    "is_complete",
    "plan_combinations",
]

# Settings used after the backbones: varying them reuses the features (every SegmentorSettings field but the
# resizing, the windows and window_batch).
PROPAGATION_KEYS = tuple(f.name for f in fields(SegmentorSettings) if f.name not in (*ENCODING_FIELDS, "window_batch"))


@dataclass(frozen=True)
class Combination:
    """One point of the grid."""

    name: str  # "k=100,alpha=0.9" (the varying keys), "" for a run without a sweep
    config: DictConfig  # the full, checked config

    @property
    def folder(self) -> str:
        """Sub-folder name of this combination (``/`` in values becomes ``_``)."""
        return self.name.replace("/", "_")


def plan_combinations(
    config_name: str | Path, overrides: Sequence[str], sweep: bool, dataset: str | None = None
) -> list[Combination]:
    """Every combination of a (possibly swept) command line, each config loaded and checked.

    ``dataset``: the run's only dataset, whose ``per_dataset`` values (own-protocol configs) apply.

    Raises:
        ConfigError: a bad key or value in any combination, or comma lists without ``sweep``.
    """
    varying = sweep_parameters(overrides)
    if varying and not sweep:
        raise ConfigError(
            f"override(s) {', '.join(varying)} list several values: add --sweep (or -m) to evaluate the grid"
        )
    combinations, seen = [], set()
    for grid_overrides in expand_sweep(overrides, check=False):  # each point is loaded and checked below
        if tuple(grid_overrides) in seen:  # k=10,10 lists one setting twice: evaluate it once
            continue
        seen.add(tuple(grid_overrides))
        values = dict(item.split("=", 1) for item in grid_overrides)
        name = ",".join(f"{key}={values[key]}" for key in varying)
        try:
            config = load_config(config_name, grid_overrides, dataset=dataset)
        except ConfigError as error:
            raise ConfigError(f"sweep setting {name}: {error}" if name else str(error)) from error
        combinations.append(Combination(name, config))
    return combinations


def _encoding_key(config: DictConfig) -> str:
    """The config without the propagation keys: equal keys -> equal backbone inputs and outputs."""
    rest = OmegaConf.to_container(config, resolve=True)
    for key in PROPAGATION_KEYS:
        rest.pop(key, None)
    return json.dumps(rest, sort_keys=True)


def group_by_encoding(combinations: Sequence[Combination]) -> list[list[Combination]]:
    """Combinations grouped so that each group needs one backbone pass per image (grid order kept)."""
    groups: dict[str, list[Combination]] = {}
    for combination in combinations:
        groups.setdefault(_encoding_key(combination.config), []).append(combination)
    return list(groups.values())


def is_complete(path: Path, config: DictConfig, limit: int | None, measure_boundary: bool) -> bool:
    """Whether ``path`` is a finished results.json of this config (for ``--resume``)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("mIoU", "missing") == "missing" or "num_images" not in record:
        return False
    if measure_boundary and record.get("boundary_mIoU") is None:
        return False
    return record.get("config") == OmegaConf.to_container(config, resolve=True) and record.get("limit") == limit


def dataset_change(recorded: object, current: dict | None) -> str | None:
    """What changed in a dataset file since a results.json recorded its resolved content (for ``--resume``), as
    a phrase naming the keys, the classes or the image list; None when nothing did.

    Args:
        recorded: the record's ``dataset_file`` entry (None or absent for a benchmark).
        current: ``UserDataset.resolved_content()`` of the dataset now, None for a benchmark.
    """
    if current is None:
        return None if recorded is None else "the results are of a dataset file, this is a benchmark"
    if not isinstance(recorded, dict):
        return f"the results record no content of the dataset file {current['file']} (written before it was recorded)"
    changes = []
    keys, old_keys = current["keys"], recorded.get("keys") or {}
    changes += [
        f"{key} {json.dumps(old_keys.get(key))} -> {json.dumps(keys[key])}"
        for key in keys
        if old_keys.get(key) != keys[key]
    ]
    classes, old_classes = current["classes"], recorded.get("classes")
    if old_classes != classes:
        changes.append(f"classes {json.dumps(old_classes)} -> {json.dumps(classes)}")
    images, old_images = current["images"], recorded.get("images") or {}
    if old_images != images:
        count = f"{old_images.get('count')} -> {images['count']} images"
        changes.append(
            f"the image list ({count if old_images.get('count') != images['count'] else 'same count, other names or order'})"
        )
    return f"the dataset file {current['file']} changed: {'; '.join(changes)}" if changes else None


def _cell(value: float | None) -> str:
    return "nan" if value is None else f"{value:.1f}"


def _average(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def format_sweep_tables(
    rows: dict[str, dict[str, dict]], dataset_keys: Sequence[str], measure_boundary: bool
) -> tuple[str, str]:
    """The sweep table as Markdown and CSV: one row per setting, one column per dataset, the average.

    Args:
        rows: setting name -> dataset key -> results record (``mIoU``, ``boundary_mIoU`` in %).
        dataset_keys: column order.
        measure_boundary: add Boundary mIoU columns.

    Returns:
        ``(markdown, csv)``; the row with the best average mIoU is marked ``*`` (``best`` = 1 in the CSV).
    """
    metrics = ["mIoU"] + (["boundary_mIoU"] if measure_boundary else [])
    header = ["setting"]
    for metric in metrics:
        suffix = "" if metric == "mIoU" else " bIoU"
        header += [f"{column_name(k)}{suffix}" for k in dataset_keys] + [f"avg{suffix}"]
    table = []
    for name, records in rows.items():
        cells: list[float | None] = []
        for metric in metrics:
            values = [records[k][metric] for k in dataset_keys]
            cells += values + [_average(values)]
        table.append((name, cells))
    averages = [cells[len(dataset_keys)] for _, cells in table]
    scored = [i for i, average in enumerate(averages) if average is not None]
    best = max(scored, key=lambda i: averages[i]) if scored else -1  # no row is best when none has a value
    lines = ["| " + " | ".join(header) + " | best |", "|" + "---|" * (len(header) + 1)]
    for i, (name, cells) in enumerate(table):
        lines.append("| " + " | ".join([name] + [_cell(v) for v in cells]) + f" | {'*' if i == best else ''} |")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header + ["best"])
    for i, (name, cells) in enumerate(table):
        writer.writerow([name] + ["" if v is None else f"{v:.4f}" for v in cells] + [int(i == best)])
    return "\n".join(lines) + "\n", buffer.getvalue()
