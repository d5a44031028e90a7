"""One run that proves the GPU path: GPU tests, CPU-vs-GPU agreement of every stage, determinism, benchmarks.

Thin wrapper of :mod:`lposs.cli.gpu_check`: usage and options there, or with ``--help``.
"""

import sys

from lposs.cli.gpu_check import main, parse_args

if __name__ == "__main__":
    sys.exit(main(parse_args()))
