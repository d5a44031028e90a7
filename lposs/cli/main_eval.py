"""Evaluate LPOSS / LPOSS+ (or the MaskCLIP baseline) on the paper's benchmarks.

Usage::

    torchrun --nproc_per_node=8 main_eval.py lposs_plus.yaml --dataset voc --measure_boundary
    python main_eval.py lposs.yaml --dataset voc,context --output results/lposs
    python main_eval.py lposs_plus.yaml --dataset all --output results/lposs_plus
    python main_eval.py lposs.yaml --dataset voc k=200 alpha=0.9 data_root=/data
    python main_eval.py lposs_plus.yaml --dataset voc,context59 --output results/ablation \
        --sweep k=100,200,400 alpha=0.9,0.95 tau=0.005,0.01
    python main_eval.py lposs_plus.yaml --dataset path/to/mydata.yaml --measure_boundary --output results/mydata
    torchrun --nproc_per_node=8 main_eval.py lposs_plus.yaml --images photos/ --classes "sky;cloud,tree,person" \
        --save_predictions out/ --save_scores --resume

Sweeps use Hydra's multirun comma syntax (``--sweep``, or ``-m`` / ``--multirun``): every combination is
evaluated, and the backbones run once per image for all settings that only change the propagation.

Config files are looked up in ``configs/`` when not given as a path; ``key=value`` overrides follow the flags.
Datasets: voc, voc20, context, context59, coco_object, coco_stuff, cityscapes, ade20k (or ``all``), and your own:
a dataset file (``mydata.yaml``, or its name in ``$LPOSS_DATASETS``; docs/datasets.md, section 'Your own dataset').
``--images DIR`` segments every image under DIR (no labels, no metrics): docs/demo.md, section 'Folders at scale'.
The method, its constants and the reproduced quirks of the paper's code: docs/method.md.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from pathlib import Path

import torch.distributed as dist

from lposs.cli.segment_images import check_image_args, run_images
from lposs.datasets import DATASET_KEYS, DatasetError
from lposs.evaluation.config import ConfigError
from lposs.evaluation.distributed import PeerFailure
from lposs.evaluation.interrupts import Terminated, sigterm_raises
from lposs.evaluation.loop import NonFiniteScores, SampleError, is_main_process
from lposs.evaluation.run_output import PublishError
from lposs.evaluation.runner import PAPER_ORDER, RunReport, dataset_keys, preflight, run
from lposs.outputs.checks import OutputLocationError
from lposs.outputs.lock import OutputInUse

__all__ = ["PAPER_ORDER", "dataset_keys", "main", "parse_args"]

# Errors writing the outputs (a full disk, a mount gone read-only): one line naming the path, exit 1.
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}
_WRITE_ERRORS |= {errno.EMFILE, errno.ENFILE}  # too many open files: a fault of the run, not of its inputs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="config file: lposs.yaml, lposs_plus.yaml, maskclip.yaml or a path")
    parser.add_argument(
        "--dataset",
        help=f"one of {', '.join(DATASET_KEYS)}, a dataset file (.yaml) or its name, a comma list, or 'all' (default voc)",
    )
    parser.add_argument(
        "--measure_boundary", action="store_true", help="also compute Boundary IoU (docs/method.md, Metrics)"
    )
    parser.add_argument("--output", type=Path, help="folder for results.json, the resolved config and the log")
    parser.add_argument("--save_predictions", type=Path, help="folder for one label PNG per image")
    parser.add_argument(
        "--images", type=Path, metavar="DIR", help="segment every image under DIR (no labels, no metrics)"
    )
    parser.add_argument("--classes", help="with --images: comma-separated class names (';' aliases), or a class file")
    parser.add_argument("--save_scores", action="store_true", help="with --images: also write float16 class scores")
    parser.add_argument(
        "--save_visualisations",
        type=int,
        default=0,
        metavar="N",
        help="write overlays of the first N images of each dataset (needs --output; with --images: OUT/overlays)",
    )
    parser.add_argument("--limit", type=int, help="evaluate only the first N images of each dataset (quick checks)")
    parser.add_argument(
        "--sweep",
        "-m",
        "--multirun",
        action="store_true",
        help="comma lists in the overrides (k=100,200 alpha=0.9,0.95) form a grid; every combination is evaluated",
    )
    parser.add_argument(
        "--resume", action="store_true", help="skip (setting, dataset) pairs whose results.json is complete"
    )
    parser.add_argument(
        "--image_batch",
        type=int,
        default=4,
        metavar="N",
        help="images whose windows share backbone forwards (at most window_batch windows each; default 4)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="key=value config overrides, e.g. k=200 model.clip.pretrained=null"
    )
    # Overrides may follow the flags: argparse leaves them unrecognised, so collect them here.
    args, rest = parser.parse_known_args(argv)
    unknown = [item for item in rest if item.startswith("-") or "=" not in item]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = list(args.overrides) + rest
    if args.save_visualisations < 0:
        parser.error(f"--save_visualisations must be >= 0 (images per dataset), got {args.save_visualisations}")
    check_image_args(parser, args)
    args.dataset = args.dataset or "voc"
    if args.save_visualisations and args.output is None and args.images is None:
        parser.error("--save_visualisations needs --output (the overlays go to OUTPUT/visualisations)")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    if args.image_batch < 1:
        parser.error(f"--image_batch must be >= 1, got {args.image_batch}")
    return args


def _fault(message: str) -> int:
    """One line for a fault of the run itself (exit 1); ``LPOSS_TRACEBACK=1`` shows the traceback instead."""
    if os.environ.get("LPOSS_TRACEBACK") == "1":
        raise
    print(f"error: {message}", file=sys.stderr)
    return 1


def main(args: argparse.Namespace) -> int:
    """Check everything, then evaluate; 0 on success, 2 on bad input, 1 on a fault of the run (one line on stderr
    each), 130 on Ctrl-C, 143 on SIGTERM."""
    start = time.perf_counter()
    report = RunReport()  # what the run did to its output folders, for the last line
    try:
        with sigterm_raises():
            if args.images is not None:
                run_images(args)  # a folder of unlabelled images: label maps, no metrics
            else:
                plan = preflight(args)  # nothing under --output is touched before this passes
                run(args, plan, report)
        if is_main_process():
            print(f"done in {time.perf_counter() - start:.1f} s")
    except PublishError as error:
        kept = f"; this run's results are kept in {', '.join(map(str, report.kept))}" if report.kept else ""
        return _fault(f"cannot publish {error.filename}: {error.strerror}{kept}")
    except (PeerFailure, NonFiniteScores) as error:  # NaN scores: the models' fault on one image, not the file's
        if args.images is not None:  # a folder run writes each image's files as it goes, no staging
            return _fault(f"{error}; the images done so far stay (finish with --resume)")
        return _fault(f"{error}; {report.aftermath()}")
    except (ConfigError, DatasetError, SampleError, FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OutputInUse, OutputLocationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in _WRITE_ERRORS:
            raise
        path = error.filename or "an output file"
        if args.images is not None:  # a folder run writes each image's files as it goes, no staging
            return _fault(f"cannot write {path}: {error.strerror}; the images done so far stay (finish with --resume)")
        if report.published:  # only the log is appended after the commit
            return _fault(f"results published; could not append eval.log: {path}: {error.strerror}")
        return _fault(f"cannot write {path}: {error.strerror}; {report.aftermath()}")
    except ValueError as error:  # bad model names, patch sizes, pretrained tags (models.ModelConfigError)
        if type(error).__name__ != "ModelConfigError":
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # weights that cannot be loaded offline (models.WeightsUnavailableError)
        if type(error).__name__ != "WeightsUnavailableError":
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as stop:
        what = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
        if args.images is not None:
            print(
                f"{what}: the images done so far are in {args.save_predictions} (finish with --resume)", file=sys.stderr
            )
        elif report.published:
            print(f"{what} after this run's results were published", file=sys.stderr)
        else:
            swept = "completed settings are in place (finish with --resume), " if args.sweep else ""
            print(f"{what}: {swept}earlier results under --output are otherwise unchanged", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def cli() -> int:
    """The console script ``lposs-eval``."""
    return main(parse_args())


if __name__ == "__main__":
    sys.exit(cli())
