"""Time the propagation engine against the reference formulation, on the same inputs, in one run.

Thin wrapper of :mod:`lposs.cli.benchmark_lp`: usage and options there, or with ``--help``.
"""

import sys

from lposs.cli.benchmark_lp import main, parse_args

if __name__ == "__main__":
    sys.exit(main(parse_args()))
