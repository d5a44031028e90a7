"""``--dataset voc,voc20`` in one run against ``--dataset voc`` and ``--dataset voc20`` run one after the other.

Thin wrapper of :mod:`lposs.cli.benchmark_shared_pass`: usage and options there, or with ``--help``.
"""

import sys

from lposs.cli.benchmark_shared_pass import main, parse_args

if __name__ == "__main__":
    sys.exit(main(parse_args()))
