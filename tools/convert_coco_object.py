"""Make COCO-Object labels (``*_instanceTrainIds.png``) from the raw COCO-Stuff164k label maps.

Raw maps (``stuffthingmaps_trainval2017.zip``, unzipped into ``annotations/``) hold COCO category id - 1.
Thing ids 0..90 (80 classes, 11 unused ids skipped) become 1..80 in order; every stuff id and the
unlabelled 255 become 0 = background (a quirk of the GroupViT/TCL/CLIP-DINOiser converter, reproduced).

Usage (from the repository root):
    python tools/convert_coco_object.py data/coco_stuff164k
    python tools/convert_coco_object.py data/coco_stuff164k --splits val2017 train2017
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ''):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import DatasetError  # noqa: E402
from datasets.label_conversion import coco_object_lut, convert_coco_split  # noqa: E402

SUFFIX = '_instanceTrainIds.png'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('coco_root', type=Path, help='COCO-Stuff164k folder holding annotations/<split>/*.png')
    parser.add_argument('--splits', nargs='+', default=['val2017'], help='annotation sub-folders to convert')
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    try:
        for split in args.splits:
            ann_dir = convert_coco_split(args.coco_root, split, coco_object_lut(), SUFFIX, desc='COCO-Object')
            print(f'wrote *{SUFFIX} files to {ann_dir}')
    except (DatasetError, FileNotFoundError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(parse_args()))
