"""Segment your own images with LPOSS+ (default), LPOSS or the MaskCLIP baseline, given a list of class names.

Thin wrapper of :mod:`lposs.cli.demo`: usage and options there, or with ``--help``.
"""

import sys

from lposs.cli.demo import cli

if __name__ == "__main__":
    sys.exit(cli())
