"""A 12-setting label-propagation sweep against 12 separate runs on the same images, in one process.

Thin wrapper of :mod:`lposs.cli.benchmark_sweep`: usage and options there, or with ``--help``.
"""

import sys

from lposs.cli.benchmark_sweep import main, parse_args

if __name__ == "__main__":
    sys.exit(main(parse_args()))
