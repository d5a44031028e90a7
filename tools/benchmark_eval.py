"""Images per second and seconds per stage of LPOSS+ (backbones, patch LP, pixel LP, the rest) per image size.

Thin wrapper of :mod:`lposs.cli.benchmark_eval`: usage and options there, or with ``--help``.
"""

import sys

from lposs.cli.benchmark_eval import main, parse_args

if __name__ == "__main__":
    sys.exit(main(parse_args()))
