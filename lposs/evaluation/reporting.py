"""Writing results: the paper-style table, the run's environment, optional wandb logging."""

from __future__ import annotations

import importlib
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# The package's one durable atomic write (lposs.files.atomic), importable from here as before.
from lposs.files.atomic import TEMPORARY_NAME, atomic_target, atomic_write_text, default_file_mode, naming_path

__all__ = [
    "TEMPORARY_NAME",
    "atomic_target",
    "atomic_write_text",
    "check_wandb",
    "column_name",
    "default_file_mode",
    "environment_record",
    "format_paper_table",
    "method_label",
    "naming_path",
    "start_wandb",
    "summary_record",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
# Distribution names of the packages whose versions go into results.json.
_VERSIONED_PACKAGES = {"torch": "torch", "open_clip": "open_clip_torch", "timm": "timm", "mmseg": "mmsegmentation"}

_COLUMN_NAMES = {
    "voc": "VOC",
    "context": "Context",
    "coco_object": "Object",
    "voc20": "VOC20",
    "context59": "C59",
    "coco_stuff": "Stuff",
    "cityscapes": "City",
    "ade20k": "ADE",
}


def column_name(key: str) -> str:
    """Column header of a dataset key in the paper's tables (``context59`` -> ``C59``)."""
    return _COLUMN_NAMES.get(key, key)


def _average(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def format_paper_table(method: str, records: dict[str, dict], order: Sequence[str], metric: str = "mIoU") -> str:
    """One row per method, one column per dataset (the paper's order), then the average.

    Args:
        records: dataset key -> results record holding ``metric`` (a percentage or None).
        metric: ``"mIoU"`` or ``"boundary_mIoU"``.
    """
    keys = [k for k in order if k in records] + [k for k in records if k not in order]
    values = [records[k][metric] for k in keys]
    header = ["method"] + [column_name(k) for k in keys] + ["avg"]
    cells = [method] + [f"{v:.1f}" if v is not None else "nan" for v in values + [_average(values)]]
    widths = [max(len(h), len(c)) for h, c in zip(header, cells)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    row = "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line, rule, row])


def method_label(config: DictConfig) -> str:
    """The method's name in tables and records: ``maskclip``, ``lposs`` or ``lposs_plus`` for the paper's backbones;
    another CLIP head names the baseline (``naclip``) or is added in brackets (``lposs_plus (naclip)``), and so is a
    DINO feature kind other than ``v`` where propagation uses it (``lposs (sclip, dino k)``) and a ProxyCLIP proxy
    other than its ``x`` (``proxyclip (proxy v)``, ``lposs (proxyclip, proxy v)``)."""
    head = OmegaConf.select(config, "model.clip.head", default="maskclip")
    proxy = OmegaConf.select(config, "model.clip.proxy_features", default="x")
    proxy_notes = [f"proxy {proxy}"] if head == "proxyclip" and proxy != "x" else []
    if not config.patch_propagation:
        return f"{head} ({proxy_notes[0]})" if proxy_notes else head
    base = "lposs_plus" if config.pixel_refine else "lposs"
    kind = OmegaConf.select(config, "model.dino.features", default="v")
    notes = ([head] if head != "maskclip" else []) + proxy_notes + ([f"dino {kind}"] if kind != "v" else [])
    return f"{base} ({', '.join(notes)})" if notes else base


def summary_record(method: str, records: dict[str, dict], order: Sequence[str]) -> dict:
    """The whole table of a run: mIoU and Boundary mIoU (None when not measured) per dataset, and their averages."""
    keys = [k for k in order if k in records] + [k for k in records if k not in order]
    miou = {k: records[k]["mIoU"] for k in keys}
    boundary = {k: records[k]["boundary_mIoU"] for k in keys}
    return {
        "method": method,
        "datasets": keys,
        "mIoU": miou,
        "boundary_mIoU": boundary,
        "average": {"mIoU": _average(list(miou.values())), "boundary_mIoU": _average(list(boundary.values()))},
    }


def _git_commit() -> str | None:
    """``git rev-parse HEAD`` of this repository, or None (not a checkout, no git, any failure)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and len(commit) == 40 else None


def _package_version(module: str, distribution: str) -> str | None:
    """The module's own ``__version__`` (torch's includes its build, ``2.x+cu130``), else the installed metadata."""
    try:
        return str(importlib.import_module(module).__version__)
    except (ImportError, AttributeError):
        pass
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def environment_record() -> dict:
    """Package versions (torch, open_clip, timm, mmseg; None when absent) and the git commit (None outside git)."""
    versions = {name: _package_version(name, dist) for name, dist in _VERSIONED_PACKAGES.items()}
    return {"versions": versions, "git_commit": _git_commit()}


def check_wandb(mode: str) -> None:
    """Raise ImportError (one line) when ``wandb.mode`` asks for wandb and the package cannot be imported."""
    if mode == "disabled":
        return
    try:
        import wandb  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"wandb.mode={mode} needs the wandb package: pip install wandb (or set wandb.mode=disabled)"
        ) from error


def start_wandb(config: DictConfig, method: str, dataset_keys: Sequence[str]):
    """A wandb run when ``wandb.mode`` is online/offline, else None. wandb is imported only then."""
    if config.wandb.mode == "disabled":
        return None
    check_wandb(config.wandb.mode)
    import wandb

    return wandb.init(
        project=config.wandb.project,
        entity=config.wandb.entity,
        mode=config.wandb.mode,
        name=f"{method}-{'-'.join(dataset_keys)}",
        config=OmegaConf.to_container(config, resolve=True),
    )
