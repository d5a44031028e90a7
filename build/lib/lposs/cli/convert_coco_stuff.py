"""Make COCO-Stuff labels (``*_labelTrainIds.png``, 171 classes) from the raw COCO-Stuff164k label maps.

Raw maps (``stuffthingmaps_trainval2017.zip``, unzipped into ``annotations/``) hold COCO category id - 1:
the 182 ids minus 11 unused ones become 0..170 in order and 255 stays 255 (ignore), exactly like mmseg's
``tools/convert_datasets/coco_stuff164k.py``.

Usage (from the repository root):
    python tools/convert_coco_stuff.py data/coco_stuff164k
    python tools/convert_coco_stuff.py data/coco_stuff164k --splits val2017 train2017
"""

from __future__ import annotations

import argparse
import sys

from lposs.datasets.label_conversion import coco_stuff_lut, convert_coco_main, parse_coco_args

SUFFIX = "_labelTrainIds.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse_coco_args(__doc__, argv)


def main(args: argparse.Namespace) -> int:
    return convert_coco_main(args, coco_stuff_lut(), SUFFIX, desc="COCO-Stuff")


if __name__ == "__main__":
    sys.exit(main(parse_args()))
