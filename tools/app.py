"""A small Gradio web app: upload an image, type class names, pick a method, get the coloured overlay.

Thin wrapper of :mod:`lposs.cli.app`: usage and options there, or with ``--help``.
"""

import sys

from lposs.cli.app import cli

if __name__ == "__main__":
    sys.exit(cli())
