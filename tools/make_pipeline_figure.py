"""Draw the README's pipeline diagram with PIL.

Thin wrapper of :mod:`lposs.cli.make_pipeline_figure`: usage and options there, or with ``--help``.
"""

import sys

from lposs.cli.make_pipeline_figure import main, parse_args

if __name__ == "__main__":
    sys.exit(main(parse_args()))
