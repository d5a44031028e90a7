"""``main_eval.py CONFIG --images DIR --classes ... --save_predictions OUT``: label maps for a folder, no metrics.

The run behind the unlabelled-folder mode of ``main_eval.py`` (:mod:`lposs.evaluation.folder_run` does the
work): the config, the classes, the process group, the model config, the folder and the output folder are all
checked (the output folder locked, and seen by every rank) before any weights load; then the ranks take the
images as they become free.
"""

from __future__ import annotations

import argparse
import sys

import torch.distributed as dist
from omegaconf import OmegaConf

from lposs.datasets.class_lists import parse_class_argument
from lposs.evaluation.device import apply_precision
from lposs.evaluation.folder_outputs import opened_outputs
from lposs.evaluation.folder_plan import SKIPPED, FolderResult, plan_folder, settings_record
from lposs.evaluation.folder_run import run_folder
from lposs.evaluation.loop import is_main_process
from lposs.evaluation.preflight import prepare_device
from lposs.evaluation.runner import make_deterministic
from lposs.evaluation.sweep import plan_combinations
from lposs.segmentation import Segmentor, SegmentorSettings

__all__ = ["check_image_args", "run_images"]

# Flags of the labelled evaluation that the folder mode has no use for.
_EVALUATION_ONLY = {"--dataset": "dataset", "--output": "output", "--measure_boundary": "measure_boundary"}


def check_image_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The flags of ``--images`` go together: ``--classes`` and ``--save_predictions`` needed, metrics flags not."""
    if args.images is None:
        for flag in ("--classes", "--save_scores"):
            if getattr(args, flag[2:]):
                parser.error(f"{flag} goes with --images DIR (segmenting a folder of unlabelled images)")
        return
    for flag in ("--classes", "--save_predictions"):
        if not getattr(args, flag[2:]):
            parser.error(f"--images needs {flag}")
    for flag, name in _EVALUATION_ONLY.items():
        if getattr(args, name):
            parser.error(f"--images segments without labels: {flag} does not apply (outputs go to --save_predictions)")
    if args.sweep:
        parser.error("--images runs one setting: --sweep does not apply")


def summary_line(result: FolderResult, out: str, world: int) -> str:
    """What the run did, in one line (rank 0 prints it)."""
    line = f"{result.images} images: {result.segmented} segmented"
    if result.complete_before:
        line += f", {result.complete_before} already complete (--resume)"
    if result.failed:
        line += f", {len(result.failed)} skipped (could not be read or segmented; listed in {out}/{SKIPPED})"
    return line + f"; {result.images_per_second:.2f} images/s over {world} process(es)"


def run_images(args: argparse.Namespace) -> FolderResult:
    """Check, load, segment (see the module docstring); rank 0 prints the summary line.

    Raises:
        ConfigError, DatasetError, FileNotFoundError, OutputLocationError, ModelConfigError, OutputInUse: one line
            naming the bad input, before any weights load (the lock: before any image is segmented).
    """
    from lposs.models import LPOSSBackbones  # heavy imports only once the command line is known good

    combination = plan_combinations(args.config, args.overrides, False)[0]
    config = combination.config
    classes = parse_class_argument(args.classes)
    device = prepare_device([combination])
    settings = SegmentorSettings.from_config(config)
    record = settings_record(settings, OmegaConf.to_container(config.model, resolve=True))
    options = {"save_scores": args.save_scores, "overlays": args.save_visualisations, "limit": args.limit}
    plan = plan_folder(args.images, args.save_predictions, classes, record, resume=args.resume, **options)
    with opened_outputs(plan):  # the lock, and the folder checked again under it: before any weights load
        make_deterministic(config.seed, device)  # random-init weights (pretrained=null) equal on every rank
        apply_precision(config.strict_float32)
        backbones = LPOSSBackbones.from_config(config.model, device).eval()
        backbones.set_heads(config.model.clip.head, config.model.dino.features)
        backbones.set_classes(classes)
        segmentor = Segmentor(backbones, settings)
        result = run_folder(segmentor, plan, image_batch=args.image_batch, num_workers=config.num_workers)
    if is_main_process():
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        print(summary_line(result, str(plan.out), world), file=sys.stdout)
    return result
