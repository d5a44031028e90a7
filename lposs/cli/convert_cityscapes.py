"""Make Cityscapes ``*_gtFine_labelTrainIds.png`` labels (19 classes, 255 = ignore) under gtFine/<split>.

Two ways, same result:
- ``cityscapesscripts`` (if installed, ``pip install cityscapesscripts``): each ``*_gtFine_polygons.json`` is
  drawn with its ``json2labelImg(..., 'trainIds')``, as mmseg's converter does;
- pure numpy fallback: each ``*_gtFine_labelIds.png`` (shipped in gtFine_trainvaltest.zip) is mapped with the
  standard id -> trainId table of cityscapesscripts' labels.py. The official labelIds PNGs are drawn from
  the same polygons in the same order, so the pixel-wise mapping gives the same labels.

Usage (from the repository root):
    python tools/convert_cityscapes.py data/cityscapes
    python tools/convert_cityscapes.py data/cityscapes --splits train val --method numpy
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from tqdm import tqdm

from lposs.datasets.label_conversion import (
    cityscapes_lut,
    convert_label_files,
    converter_parser,
    read_label_png,
    remap_label,
    run_converter,
)
from lposs.files.atomic import atomic_target

SUFFIX = "_gtFine_labelTrainIds.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = converter_parser(
        __doc__, "cityscapes_root", "folder holding gtFine/<split>/<city>/", "val", "gtFine sub-folders to convert"
    )
    parser.add_argument(
        "--method",
        choices=["auto", "cityscapesscripts", "numpy"],
        default="auto",
        help="auto: cityscapesscripts when installed, else the numpy table",
    )
    return parser.parse_args(argv)


def _find(split_dir: Path, pattern: str) -> list[Path]:
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"Cityscapes label folder not found: {split_dir} (unzip gtFine_trainvaltest.zip into the Cityscapes folder)"
        )
    files = sorted(split_dir.rglob(pattern))
    if not files:
        raise FileNotFoundError(f"no {pattern} file under {split_dir}")
    return files


def convert_with_numpy(split_dir: Path) -> int:
    """Map every ``*_gtFine_labelIds.png`` under ``split_dir`` to ``*_gtFine_labelTrainIds.png``."""
    lut = cityscapes_lut()
    jobs = [
        (f, f.with_name(f.name.replace("_gtFine_labelIds.png", SUFFIX)))
        for f in _find(split_dir, "*_gtFine_labelIds.png")
    ]
    return convert_label_files(
        jobs, lambda src: remap_label(read_label_png(src), lut, src), desc=f"Cityscapes {split_dir.name}"
    )


def convert_with_cityscapesscripts(split_dir: Path) -> int:
    """Draw every ``*_gtFine_polygons.json`` under ``split_dir`` with cityscapesscripts' json2labelImg."""
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    files = _find(split_dir, "*_gtFine_polygons.json")
    for src in tqdm(files, desc=f"Cityscapes {split_dir.name}", unit="file"):
        dst = src.with_name(src.name.replace("_gtFine_polygons.json", SUFFIX))
        with atomic_target(dst, suffix=".png") as tmp:  # json2labelImg infers PNG from the name
            json2labelImg(str(src), str(tmp), "trainIds")
    return len(files)


def main(args: argparse.Namespace) -> int:
    method = args.method
    if method == "auto":
        method = "cityscapesscripts" if importlib.util.find_spec("cityscapesscripts") else "numpy"
    elif method == "cityscapesscripts" and importlib.util.find_spec("cityscapesscripts") is None:
        print(
            "error: cityscapesscripts is not installed (pip install cityscapesscripts), or use --method numpy",
            file=sys.stderr,
        )
        return 1
    convert = convert_with_cityscapesscripts if method == "cityscapesscripts" else convert_with_numpy

    def convert_splits() -> None:
        for split in args.splits:
            count = convert(args.cityscapes_root / "gtFine" / split)
            print(f"wrote {count} *{SUFFIX} files under {args.cityscapes_root / 'gtFine' / split} ({method})")

    return run_converter(convert_splits)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
