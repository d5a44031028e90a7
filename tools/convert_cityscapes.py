"""Make Cityscapes ``*_gtFine_labelTrainIds.png`` labels (19 classes, 255 = ignore) under gtFine/<split>.

Thin wrapper of :mod:`lposs.cli.convert_cityscapes`: usage and options there, or with ``--help``.
"""

import sys

from lposs.cli.convert_cityscapes import main, parse_args

if __name__ == "__main__":
    sys.exit(main(parse_args()))
