"""Make PASCAL Context 60-class labels (``VOC2010/SegmentationClassContext/*.png``) and the split lists

Thin wrapper of :mod:`lposs.cli.convert_pascal_context`: usage and options there, or with ``--help``.
"""

import sys

from lposs.cli.convert_pascal_context import main, parse_args

if __name__ == "__main__":
    sys.exit(main(parse_args()))
