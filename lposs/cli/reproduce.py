"""Each method at its own protocol on the eight benchmarks, its published numbers beside (docs/benchmarks.md,
"Published numbers side by side").

Usage::

    python tools/reproduce.py --plan                          # the commands and the published table; runs nothing
    python tools/reproduce.py --data_root ./data --output runs/reproduce
    python tools/reproduce.py --methods sclip,naclip --datasets voc,context device=cuda
    python tools/reproduce.py --methods clearclip --class_files_dir clearclip=../ClearCLIP/configs

Each (method, dataset) cell runs ``main_eval.py <config> --dataset <key>`` (the baselines' ``*_own.yaml``, LPOSS's
``lposs.yaml`` and ``lposs_plus.yaml``) into ``OUTPUT/<method>/<key>``; trailing ``key=value`` overrides go to every
run; ``--class_files_dir METHOD=DIR`` gives one method's runs the authors' class files in DIR (``class_files_dir=DIR``).
Before any weights load, every cell is checked: one line per missing thing (weights, dataset, class file); the
cells that are ready run, and the table prints measured mIoU minus the published one per cell.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from lposs.datasets import DatasetError, build_dataset, protocol_class_names
from lposs.evaluation.config import ConfigError, load_config
from lposs.evaluation.preflight import PAPER_ORDER

__all__ = ["METHODS", "PUBLISHED", "Cell", "format_table", "main", "parse_args", "plan_cells"]

# method -> its config (the method's own protocol)
METHODS = {
    "lposs": "lposs.yaml",
    "lposs_plus": "lposs_plus.yaml",
    "sclip": "sclip_own.yaml",
    "naclip": "naclip_own.yaml",
    "clearclip": "clearclip_own.yaml",
    "proxyclip": "proxyclip_own.yaml",
}
# the methods at an author's own protocol, whose class names are the authors' files: --class_files_dir may replace them
OWN_CLASS_FILES = tuple(method for method, config in METHODS.items() if config.endswith("_own.yaml"))
# mIoU % as published, in PAPER_ORDER (voc, context, coco_object, voc20, context59, coco_stuff, cityscapes, ade20k);
# None: not verified from a source we could read (docs/benchmarks.md says where each number comes from)
PUBLISHED: dict[str, tuple[float | None, ...]] = {
    "lposs": (None,) * 8,  # the LPOSS row of the paper's table was not in our sources
    "lposs_plus": (
        61.1,
        34.6,
        33.4,
        78.8,
        37.8,
        25.9,
        37.3,
        21.8,
    ),  # LPOSS paper (CVPR 2025), docs/method.md "Published results"
    "sclip": (59.63, 31.74, 33.52, 81.54, 34.46, 22.77, 32.34, 16.45),  # wangf3014/SCLIP README, "Results"
    "naclip": (64.07, 34.99, 36.19, 83.03, 38.35, 25.69, 38.27, 19.05),  # sinahmr/NACLIP README, "Results" (avg 42.46)
    # the ClearCLIP paper's ViT-B/16 row (ECCV 2024; avg 38.1), as later papers quote it: its README has a picture only
    "clearclip": (51.8, 32.6, 33.0, 80.9, 35.9, 23.9, 30.0, 16.7),
    # the ProxyCLIP paper's ViT-B/16 + DINO B/8 row (ECCV 2024; avg 42.3), as later papers quote it; no quote of its
    # VOC20 and C59 cells was found (the average only fixes their sum: 119.4 +- 0.4)
    "proxyclip": (61.3, 35.3, 37.5, None, None, 26.5, 38.1, 20.2),
}


@dataclass
class Cell:
    """One (method, dataset) run: its command, the published number, and what it lacks (empty: ready)."""

    method: str
    dataset: str
    command: str
    published: float | None
    missing: list[str]
    measured: float | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; trailing ``key=value`` overrides are collected in ``args.overrides``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--datasets", default=",".join(PAPER_ORDER), help="comma list of benchmark keys")
    parser.add_argument("--data_root", default="./data", help="the datasets' folder (default ./data)")
    parser.add_argument("--output", type=Path, default=Path("runs/reproduce"), help="one folder per run under it")
    parser.add_argument("--plan", action="store_true", help="print the commands and the published table only")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images of each dataset (quick checks)")
    parser.add_argument(
        "--class_files_dir",
        default="",
        help="comma list of METHOD=DIR: the authors' cls_<dataset>.txt files of that method (e.g. their configs/)",
    )
    args, rest = parser.parse_known_args(argv)
    unknown = [item for item in rest if item.startswith("-") or "=" not in item]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = rest
    for name, value, choices in (("--methods", args.methods, METHODS), ("--datasets", args.datasets, PAPER_ORDER)):
        bad = [item for item in value.split(",") if item not in choices]
        if bad:
            parser.error(f"{name}: unknown {', '.join(bad)}; expected a comma list of {', '.join(choices)}")
    args.class_folders = {}
    for item in filter(None, args.class_files_dir.split(",")):
        method, _, folder = item.partition("=")
        if method not in OWN_CLASS_FILES or not folder:
            parser.error(
                f"--class_files_dir: {item!r}; expected METHOD=DIR, METHOD one of {', '.join(OWN_CLASS_FILES)}"
            )
        args.class_folders[method] = folder
    return args


def _overrides(method: str, args: argparse.Namespace) -> list[str]:
    """The ``key=value`` overrides of one method's runs: the data root, its class files folder, the user's."""
    folder = [f"class_files_dir={args.class_folders[method]}"] if method in args.class_folders else []
    return [f"data_root={args.data_root}", *folder, *args.overrides]


def _command(method: str, key: str, args: argparse.Namespace) -> list[str]:
    config = METHODS[method]
    out = args.output / config.removesuffix(".yaml").removesuffix("_own") / key
    limit = ["--limit", str(args.limit)] if args.limit else []
    return [config, "--dataset", key, "--output", str(out), *limit, *_overrides(method, args)]


def plan_cells(args: argparse.Namespace, check: bool = True) -> list[Cell]:
    """Every requested cell, with what it lacks (``check``: configs, class files, datasets, weights; no model is
    built and no image read)."""
    cells, weights_seen = [], {}
    for method in args.methods.split(","):
        for key in args.datasets.split(","):
            argv = _command(method, key, args)
            published = PUBLISHED[method][PAPER_ORDER.index(key)]
            cell = Cell(method, key, "python main_eval.py " + " ".join(argv), published, [])
            cells.append(cell)
            if check:
                cell.missing = _missing(METHODS[method], key, _overrides(method, args), weights_seen)
    return cells


def _missing(config_name: str, key: str, overrides: list[str], weights_seen: dict) -> list[str]:
    """What one cell lacks: one line per missing thing (config, class file, dataset, weights)."""
    from lposs.models.weights import missing_weights

    try:
        config = load_config(config_name, overrides, dataset=key)
        protocol_class_names(key, str(config.class_names), config.class_files_dir)
    except (ConfigError, DatasetError) as error:
        return [str(error)]
    missing = []
    try:
        build_dataset(key, str(config.data_root))
    except (DatasetError, FileNotFoundError) as error:
        missing.append(f"dataset {key}: {error}")
    model = json.dumps({"clip": dict(config.model.clip), "dino": dict(config.model.dino)}, sort_keys=True, default=str)
    if model not in weights_seen:  # each set of weights checked once
        weights_seen[model] = missing_weights(config.model)
    return missing + weights_seen[model]


def _cell_text(cell: Cell) -> str:
    published = "n/v" if cell.published is None else f"{cell.published:.1f}"
    if cell.measured is None:
        return published
    if cell.published is None:
        return f"{cell.measured:.1f} (n/v)"
    return f"{cell.measured:.1f} ({cell.measured - cell.published:+.1f})"


def format_table(cells: list[Cell]) -> str:
    """Markdown table: a row per method, a column per dataset; a cell is the published mIoU, or, once measured,
    ``measured (measured - published)``; ``n/v``: no verified published number."""
    datasets = list(dict.fromkeys(cell.dataset for cell in cells))
    methods = list(dict.fromkeys(cell.method for cell in cells))
    by_key = {(cell.method, cell.dataset): cell for cell in cells}
    lines = ["| method | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for method in methods:
        lines.append(f"| {method} | " + " | ".join(_cell_text(by_key[(method, key)]) for key in datasets) + " |")
    return "\n".join(lines)


def _run(cell: Cell, args: argparse.Namespace) -> None:
    from lposs.cli import main_eval

    argv = _command(cell.method, cell.dataset, args)
    code = main_eval.main(main_eval.parse_args(argv))
    if code == 0:
        results = json.loads((Path(argv[argv.index("--output") + 1]) / "results.json").read_text())
        cell.measured = float(results["mIoU"])
    else:
        cell.missing.append(f"run failed with exit code {code}")


def main(args: argparse.Namespace) -> int:
    """Plan, check, run the ready cells, print the table; 0 when every cell ran, 2 when some could not."""
    cells = plan_cells(args, check=not args.plan)
    if args.plan:
        for cell in cells:
            print(cell.command)
        print(format_table(cells))
        return 0
    lacking: dict[str, list[str]] = {}  # each missing thing once, with the cells it holds back
    for cell in cells:
        for line in cell.missing:
            lacking.setdefault(line, []).append(f"{cell.method}/{cell.dataset}")
    for line, held in lacking.items():
        print(f"missing ({', '.join(held)}): {line}", file=sys.stderr)
    for cell in cells:
        if not cell.missing:
            _run(cell, args)
    print(format_table(cells))
    return 0 if all(not cell.missing for cell in cells) else 2


def cli() -> int:
    """Entry point of ``tools/reproduce.py``."""
    return main(parse_args())
