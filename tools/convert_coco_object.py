"""Make COCO-Object labels (``*_instanceTrainIds.png``) from the raw COCO-Stuff164k label maps.

Thin wrapper of :mod:`lposs.cli.convert_coco_object`: usage and options there, or with ``--help``.
"""

import sys

from lposs.cli.convert_coco_object import main, parse_args

if __name__ == "__main__":
    sys.exit(main(parse_args()))
