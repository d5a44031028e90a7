"""Evaluate LPOSS / LPOSS+ (or the MaskCLIP baseline) on the paper's benchmarks.

Usage::

    torchrun --nproc_per_node=8 main_eval.py lposs_plus.yaml --dataset voc --measure_boundary
    python main_eval.py lposs.yaml --dataset voc,context --output results/lposs
    python main_eval.py lposs_plus.yaml --dataset all --output results/lposs_plus
    python main_eval.py lposs.yaml --dataset voc k=200 alpha=0.9 data_root=/data

Config files are looked up in ``configs/`` when not given as a path; ``key=value`` overrides follow the flags.
Datasets: voc, voc20, context, context59, coco_object, coco_stuff, cityscapes, ade20k (or ``all``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from datasets import DATASET_KEYS, DatasetError, build_dataset, class_names
from segmentation import Segmentor, SegmentorSettings
from segmentation.config import ConfigError, load_config
from segmentation.evaluation import SampleError, evaluate, is_main_process
from segmentation.metrics import format_table, summarize
from segmentation.reporting import atomic_write_text, format_paper_table, start_wandb

logger = logging.getLogger("lposs")
# Paper column order of SPEC §5.
PAPER_ORDER = ("voc", "context", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="config file: lposs.yaml, lposs_plus.yaml, maskclip.yaml or a path")
    parser.add_argument("--dataset", default="voc", help=f"one of {', '.join(DATASET_KEYS)}, a comma list, or 'all'")
    parser.add_argument("--measure_boundary", action="store_true", help="also compute Boundary IoU (SPEC §2)")
    parser.add_argument("--output", type=Path, help="folder for results.json, the resolved config and the log")
    parser.add_argument("--save_predictions", type=Path, help="folder for one label PNG per image")
    parser.add_argument(
        "--save_visualisations",
        type=int,
        default=0,
        metavar="N",
        help="write prediction/label overlays of the first N images of each dataset (needs --output)",
    )
    parser.add_argument("--limit", type=int, help="evaluate only the first N images of each dataset (quick checks)")
    parser.add_argument(
        "overrides", nargs="*", help="key=value config overrides, e.g. k=200 model.clip.pretrained=null"
    )
    # Overrides may follow the flags: argparse leaves them unrecognised, so collect them here.
    args, rest = parser.parse_known_args(argv)
    unknown = [item for item in rest if item.startswith("-") or "=" not in item]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = list(args.overrides) + rest
    if args.save_visualisations and args.output is None:
        parser.error("--save_visualisations needs --output (the overlays go to OUTPUT/visualisations)")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    return args


def dataset_keys(spec: str) -> list[str]:
    """``'all'`` or a comma list -> dataset keys, checked."""
    keys = list(PAPER_ORDER) if spec == "all" else [k.strip() for k in spec.split(",") if k.strip()]
    for key in keys:
        if key not in DATASET_KEYS:
            raise DatasetError(
                f"unknown dataset {key!r} in --dataset; expected one of {', '.join(DATASET_KEYS)} or 'all'"
            )
    if not keys:
        raise DatasetError("--dataset is empty; expected a dataset key, a comma list or 'all'")
    return keys


def setup_distributed(device_setting: str) -> torch.device:
    """Join the torchrun process group when there is one; return this rank's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and device_setting != "cpu"
    if device_setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config value device={device_setting!r} is invalid: no CUDA device is available")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if not use_cuda:
        return torch.device("cpu")
    if device_setting.startswith("cuda:"):
        return torch.device(device_setting)
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def make_deterministic(seed: int, device: torch.device) -> None:
    """Same config and seed -> bit-identical metrics (CPU always; CUDA with deterministic kernels)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def setup_logging(output: Path | None) -> None:
    """Results to stdout (rank 0) and to ``output/eval.log``."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if output is not None and is_main_process():
        output.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(output / "eval.log", mode="w"))
    logger.handlers.clear()
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if is_main_process() else logging.WARNING)
    logger.propagate = False


def result_record(key: str, method: str, summary: dict, result, config) -> dict:
    return {
        "dataset": key,
        "method": method,
        "mIoU": summary["mIoU"],
        "IoU": summary["IoU"],
        "boundary_mIoU": summary["boundary_mIoU"],
        "boundary_IoU": summary["boundary_IoU"] or None,
        "aAcc": summary["aAcc"],
        "num_images": result.num_images,
        "seconds_per_image": result.seconds_per_image,
        "config": OmegaConf.to_container(config, resolve=True),
    }


def run_dataset(key: str, args: argparse.Namespace, config, segmentor: Segmentor, dataset) -> dict:
    """Evaluate one dataset; print its table; write its results (rank 0)."""
    names = class_names(key)
    segmentor.backbones.set_classes(names)
    out_dir = None if args.output is None else (args.output if len(args.keys) == 1 else args.output / key)
    visualise = None
    if args.save_visualisations and out_dir is not None and is_main_process():
        from segmentation.visualise import OverlayWriter

        visualise = OverlayWriter(
            out_dir / "visualisations", class_names(key, aliases=False), dataset, args.save_visualisations
        )
    result = evaluate(
        segmentor,
        dataset,
        len(names),
        measure_boundary=args.measure_boundary,
        num_workers=config.num_workers,
        limit=args.limit,
        description=key,
        on_prediction=visualise,
        save_predictions=None
        if args.save_predictions is None
        else (args.save_predictions / key if len(args.keys) > 1 else args.save_predictions),
    )
    summary = summarize(result.iou_sums, result.boundary_sums, class_names(key, aliases=False))
    record = result_record(key, segmentor.settings.method, summary, result, config)
    if is_main_process():
        logger.info(f"\n{key} ({record['method']}, {result.num_images} images, {result.seconds_per_image:.2f} s/image)")
        logger.info(format_table(summary))
        if out_dir is not None:
            atomic_write_text(out_dir / "results.json", json.dumps(record, indent=2))
    return record


def main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, args.overrides)
        args.keys = dataset_keys(args.dataset)
        device = setup_distributed(config.device)
        setup_logging(args.output)
        make_deterministic(config.seed, device)
        if args.output is not None and is_main_process():
            for stale in [args.output / "results.json", *(args.output / k / "results.json" for k in args.keys)]:
                stale.unlink(missing_ok=True)  # an interrupted run must not leave an old, complete-looking file
            atomic_write_text(args.output / "config.yaml", OmegaConf.to_yaml(config))
        datasets = {key: build_dataset(key, config.data_root) for key in args.keys}  # fail fast on missing data
        from models import LPOSSBackbones  # heavy imports only once the inputs are known to be fine

        backbones = LPOSSBackbones.from_config(config.model, device).eval()
        segmentor = Segmentor(backbones, SegmentorSettings.from_config(config))
        run = start_wandb(config, segmentor.settings.method, args.keys) if is_main_process() else None
        start = time.perf_counter()
        records = {key: run_dataset(key, args, config, segmentor, datasets[key]) for key in args.keys}
        if is_main_process():
            if len(records) > 1:
                table = format_paper_table(segmentor.settings.method, records, PAPER_ORDER)
                logger.info("\n" + table)
                if args.output is not None:
                    summary = {"method": segmentor.settings.method, "mIoU": {k: r["mIoU"] for k, r in records.items()}}
                    atomic_write_text(args.output / "summary.json", json.dumps(summary, indent=2))
            if run is not None:
                run.log({f"{k}/mIoU": r["mIoU"] for k, r in records.items()})
                run.finish()
            logger.info(f"done in {time.perf_counter() - start:.1f} s")
    except (ConfigError, DatasetError, SampleError, FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # weights that cannot be loaded offline (models.WeightsUnavailableError)
        if type(error).__name__ != "WeightsUnavailableError":
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no results written", file=sys.stderr)
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
