"""Evaluate LPOSS / LPOSS+ (or the MaskCLIP baseline) on the paper's benchmarks.

Thin wrapper of :mod:`lposs.cli.main_eval`: usage and options there, or with ``--help``.
"""

import sys

from lposs.cli.main_eval import cli

if __name__ == "__main__":
    sys.exit(cli())
