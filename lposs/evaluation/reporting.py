"""Writing results: atomic files, the paper-style table, the run's environment, optional wandb logging."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

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
# The names atomic_target writes to before the rename: a run killed meanwhile leaves such a file, never a half one.
TEMPORARY_NAME = re.compile(r"\..+\.\d+\.[0-9a-f]{8}\.tmp")
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


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` minus the process umask (0644 with the usual umask 022)."""
    try:  # Linux tells the umask without changing it (loader threads may be creating files meanwhile)
        with open("/proc/self/status") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0)  # elsewhere reading the umask means setting it: put it straight back
        os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def naming_path(path: Path | str) -> Iterator[None]:
    """An ``OSError`` without a file name (a ``write`` on a full disk) raised again naming ``path``."""
    try:
        yield
    except OSError as error:
        if error.filename is not None or error.errno is None:
            raise
        raise type(error)(error.errno, error.strerror, str(path)) from error


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; renamed to ``path`` when the block ends, removed on any error.

    The name is hidden and unique (``.NAME.PID.XXXXXXXX.tmp``, :data:`TEMPORARY_NAME`), in the same folder (the
    rename is atomic), and not made by ``mkstemp``, whose 0600 mode would stay on the final file. An ``OSError``
    without a file name (a full disk) names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with naming_path(path):
            yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never a half-written file.

    The file gets the usual mode (``0o666`` minus the umask), not the ``0600`` of ``mkstemp``. An ``OSError``
    (a full disk) names ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with naming_path(path), os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
