"""Make PASCAL Context 60-class labels (``VOC2010/SegmentationClassContext/*.png``) and the split lists
``VOC2010/ImageSets/SegmentationContext/{train,val}.txt``, like mmseg's ``pascal_context.py`` converter.

Label values: 0 = background (every class outside the benchmark's 59), 1..59 = mmseg's 59 classes in
alphabetical order (ascending 459-class id). Two sources:
- ``--json trainval_merged.json``: the Detail API (``detail``, not on PyPI: install it from
  github.com/zhanghang1989/detail-api), exactly mmseg's converter (its masks may only hold 0 and the 59 ids);
- ``--mat-dir trainval``: the ``.mat`` files of the 459-class release (``trainval.tar.gz`` of the PASCAL
  Context site, variable ``LabelMap``), read with scipy. The 59 ids are kept and every other id becomes 0,
  the usual 60-class definition; the split is VOC2010 ``ImageSets/Main/{train,val}.txt`` (4998 / 5105
  images), restricted to images that have a ``.mat`` file.

Usage (from the repository root):
    python tools/convert_pascal_context.py data/VOCdevkit --mat-dir data/trainval
    python tools/convert_pascal_context.py data/VOCdevkit --json data/trainval_merged.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from lposs.datasets import DatasetError
from lposs.datasets.label_conversion import convert_label_files, pascal_context_lut, remap_label, run_converter
from lposs.files.atomic import atomic_write_text

SPLITS = ("train", "val")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("devkit", type=Path, help="VOCdevkit folder holding VOC2010/")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mat-dir", type=Path, help="folder of <image id>.mat files (459-class release)")
    source.add_argument("--json", type=Path, help="trainval_merged.json for the Detail API")
    return parser.parse_args(argv)


def read_mat_label(path: Path) -> np.ndarray:
    """``LabelMap`` of one 459-class ``.mat`` file: ``[H, W]`` integer ids in ``[0, 459]``."""
    from scipy.io import loadmat

    try:
        return np.asarray(loadmat(str(path))["LabelMap"])
    except Exception as err:
        raise DatasetError(f"cannot read LabelMap from {path}: {type(err).__name__}: {err}") from err


def _write_split(voc2010: Path, split: str, names: list[str]) -> None:
    out = voc2010 / "ImageSets" / "SegmentationContext" / f"{split}.txt"
    atomic_write_text(out, "".join(f"{name}\n" for name in sorted(names)))
    print(f"wrote {len(names)} ids to {out}")


def convert_from_mat(voc2010: Path, mat_dir: Path) -> None:
    """Labels and split lists from the ``.mat`` release, splits from VOC2010 ``ImageSets/Main``."""
    if not mat_dir.is_dir():
        raise FileNotFoundError(f"PASCAL Context .mat folder not found: {mat_dir}")
    lut = pascal_context_lut()
    for split in SPLITS:
        split_file = voc2010 / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"VOC2010 split file not found: {split_file} (unpack VOCtrainval_03-May-2010)")
        names = [n for n in split_file.read_text().split() if (mat_dir / f"{n}.mat").is_file()]
        jobs = [(mat_dir / f"{n}.mat", voc2010 / "SegmentationClassContext" / f"{n}.png") for n in names]
        convert_label_files(
            jobs, lambda src: remap_label(read_mat_label(src), lut, src), desc=f"PASCAL Context {split}"
        )
        _write_split(voc2010, split, names)


def convert_from_json(voc2010: Path, json_path: Path) -> None:
    """Labels and split lists through the Detail API, as mmseg's converter."""
    try:
        from detail import Detail
    except ImportError as err:
        raise DatasetError(
            "the Detail API (module `detail`) is not installed: install it from "
            "github.com/zhanghang1989/detail-api, or use --mat-dir"
        ) from err
    if not json_path.is_file():
        raise FileNotFoundError(f"PASCAL Context annotation file not found: {json_path}")
    lut = pascal_context_lut(strict=True)
    for split in SPLITS:
        detail = Detail(str(json_path), str(voc2010 / "JPEGImages"), split)
        images = {Path(img["file_name"]).stem: img for img in detail.getImgs()}

        def convert(src: Path, detail=detail, images=images) -> np.ndarray:
            return remap_label(detail.getMask(images[src.name]), lut, f"{json_path} image {src.name}")

        jobs = [(Path(name), voc2010 / "SegmentationClassContext" / f"{name}.png") for name in images]
        convert_label_files(jobs, convert, desc=f"PASCAL Context {split}")
        _write_split(voc2010, split, list(images))


def convert_context(devkit: Path, mat_dir: Path | None, json_path: Path | None) -> None:
    """Labels and split lists under ``devkit/VOC2010``, from ``mat_dir`` if given, else from ``json_path``."""
    voc2010 = devkit / "VOC2010"
    if not voc2010.is_dir():
        raise FileNotFoundError(f"VOC2010 folder not found: {voc2010}")
    if mat_dir is not None:
        convert_from_mat(voc2010, mat_dir)
    else:
        convert_from_json(voc2010, json_path)


def main(args: argparse.Namespace) -> int:
    return run_converter(lambda: convert_context(args.devkit, args.mat_dir, args.json))


if __name__ == "__main__":
    sys.exit(main(parse_args()))
