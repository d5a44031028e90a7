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

from lposs.datasets.label_conversion import coco_object_lut, convert_coco_main, parse_coco_args

SUFFIX = "_instanceTrainIds.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse_coco_args(__doc__, argv)


def main(args: argparse.Namespace) -> int:
    return convert_coco_main(args, coco_object_lut(), SUFFIX, desc="COCO-Object")


if __name__ == "__main__":
    sys.exit(main(parse_args()))
