"""Each method at its own protocol on the eight benchmarks, published numbers beside (docs/benchmarks.md).

Thin wrapper of :mod:`lposs.cli.reproduce`: usage and options there, or with ``--help``.
"""

import sys

from lposs.cli.reproduce import cli

if __name__ == "__main__":
    sys.exit(cli())
