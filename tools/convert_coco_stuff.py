"""Make COCO-Stuff labels (``*_labelTrainIds.png``, 171 classes) from the raw COCO-Stuff164k label maps.

Thin wrapper of :mod:`lposs.cli.convert_coco_stuff`: usage and options there, or with ``--help``.
"""

import sys

from lposs.cli.convert_coco_stuff import main, parse_args

if __name__ == "__main__":
    sys.exit(main(parse_args()))
