"""Writing results: atomic files, the paper-style table, optional wandb logging."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

__all__ = ["atomic_write_text", "format_paper_table", "start_wandb"]

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


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def format_paper_table(method: str, records: dict[str, dict], order: Sequence[str]) -> str:
    """One row per method, one column per dataset (the paper's order), then the average (mIoU %)."""
    keys = [k for k in order if k in records] + [k for k in records if k not in order]
    values = [records[k]["mIoU"] for k in keys]
    header = ["method"] + [_COLUMN_NAMES.get(k, k) for k in keys] + ["avg"]
    known = [v for v in values if v is not None]
    average = sum(known) / len(known) if known else None
    cells = [method] + [f"{v:.1f}" if v is not None else "nan" for v in values + [average]]
    widths = [max(len(h), len(c)) for h, c in zip(header, cells)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    row = "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line, rule, row])


def start_wandb(config: DictConfig, method: str, dataset_keys: Sequence[str]):
    """A wandb run when ``wandb.mode`` is online/offline, else None. wandb is imported only then."""
    if config.wandb.mode == "disabled":
        return None
    try:
        import wandb
    except ImportError as error:
        raise ImportError(
            f"wandb.mode={config.wandb.mode} needs the wandb package: pip install wandb (or set wandb.mode=disabled)"
        ) from error
    return wandb.init(
        project=config.wandb.project,
        entity=config.wandb.entity,
        mode=config.wandb.mode,
        name=f"{method}-{'-'.join(dataset_keys)}",
        config=OmegaConf.to_container(config, resolve=True),
    )
