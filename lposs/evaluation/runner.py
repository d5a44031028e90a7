"""The evaluation run behind ``main_eval.py``: pre-flight checks, then datasets x settings, then the tables.

Order of a run:

1. pre-flight (:func:`preflight`): every config of the grid, every dataset, every model config, wandb and the
   output folders (:mod:`evaluation.output_checks`) are checked; nothing under ``--output`` is touched before
   this passes; then rank 0 locks the output folders (:mod:`evaluation.output_lock`);
2. one pass over each dataset per group of settings that share backbone features (:mod:`evaluation.sweep`),
   datasets that list the same images sharing one pass (:mod:`evaluation.shared_passes`); each pass evaluates
   all settings of its group and publishes their files whole (:class:`evaluation.run_output.StagedFolder`);
3. summary, tables, config and log published at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from lposs.datasets import DATASET_KEYS, DatasetError, build_dataset, class_names
from lposs.segmentation import Segmentor, SegmentorSettings
from lposs.segmentation.segmentor import ClassColumns

from .config import ConfigError
from .device import apply_precision
from .distributed import init_process_group, set_collective_timeout
from .loop import EvaluationResult, PassMember, PredictionOutputs, evaluate_pass, is_main_process
from .metrics import format_table, summarize
from .output_checks import check_output_locations
from .reporting import (
    atomic_write_text,
    check_wandb,
    environment_record,
    format_paper_table,
    method_label,
    naming_path,
    start_wandb,
    summary_record,
)
from .run_output import Publication, StagedFolder, all_or_nothing, lock_outputs
from .shared_passes import plan_passes
from .sweep import Combination, format_sweep_tables, group_by_encoding, is_complete, plan_combinations

__all__ = ["PAPER_ORDER", "RunPlan", "dataset_keys", "preflight", "run"]

logger = logging.getLogger("lposs")
# The paper's column order (docs/method.md, "Datasets and prompts").
PAPER_ORDER = ("voc", "context", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k")


@dataclass
class RunPlan:
    """Everything a run needs, checked."""

    combinations: list[Combination]
    keys: list[str]  # dataset keys
    datasets: dict[tuple[str, str], object]  # (data_root, key) -> dataset
    device: torch.device

    @property
    def is_sweep(self) -> bool:
        return bool(self.combinations[0].name)


def dataset_keys(spec: str) -> list[str]:
    """``'all'`` or a comma list -> dataset keys, checked."""
    keys = list(PAPER_ORDER) if spec == "all" else [k.strip() for k in spec.split(",") if k.strip()]
    keys = list(dict.fromkeys(keys))  # voc,voc is evaluated once
    for key in keys:
        if key not in DATASET_KEYS:
            raise DatasetError(
                f"unknown dataset {key!r} in --dataset; expected one of {', '.join(DATASET_KEYS)} or 'all'"
            )
    if not keys:
        raise DatasetError("--dataset is empty; expected a dataset key, a comma list or 'all'")
    return keys


def build_datasets(keys: list[str], data_roots: list[str]) -> dict[tuple[str, str], object]:
    """Every dataset under every data root; all that are missing reported in one error."""
    datasets, problems = {}, []
    for root in data_roots:
        for key in keys:
            try:
                datasets[(root, key)] = build_dataset(key, root)
            except (DatasetError, FileNotFoundError) as error:
                problems.append(str(error))
    if len(problems) == 1:
        raise DatasetError(problems[0])
    if problems:
        raise DatasetError(f"{len(problems)} datasets cannot be used: " + " | ".join(problems))
    return datasets


def setup_distributed(device_setting: str) -> torch.device:
    """Join the torchrun process group when there is one; return this rank's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and device_setting != "cpu"
    if device_setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config value device={device_setting!r} is invalid: no CUDA device is available")
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if device_setting.startswith("cuda:"):
        index, count = int(device_setting.split(":")[1]), torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"config value device={device_setting!r} is invalid: this machine has {count} GPU(s)")
        if world_size > 1:
            raise ConfigError(
                f"config value device={device_setting!r} is invalid under torchrun: use device=cuda "
                "(each process takes the GPU of its LOCAL_RANK)"
            )
    device = _cuda_device(device_setting, local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)  # before the process group: NCCL binds its communicator to the current device
    if world_size > 1 and not dist.is_initialized():
        init_process_group("nccl" if use_cuda else "gloo")  # with dist_timeout (evaluation.distributed)
    return device


def _cuda_device(device_setting: str, local_rank: int) -> torch.device:
    """``cuda:N`` as given, else the GPU of this process's ``LOCAL_RANK``; a rank beyond the GPUs is a ConfigError."""
    if device_setting.startswith("cuda:"):
        return torch.device(device_setting)
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(
            f"LOCAL_RANK={local_rank} but this machine has {count} GPU(s): start at most {count} processes per "
            f"node (torchrun --nproc_per_node={count})"
        )
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


def _check_models(combinations: list[Combination], device: torch.device) -> None:
    """``models.check_model_config`` on every distinct (model config, crop): names, tags, files, dtype and the window
    side a multiple of both patch sizes, before any weights are read."""
    from lposs import models

    seen = set()
    for combination in combinations:
        key = (OmegaConf.to_yaml(combination.config.model), combination.config.crop)
        if key not in seen:
            seen.add(key)
            models.check_model_config(combination.config.model, device, crop=combination.config.crop)


def _check_pixel_backend(combinations: list[Combination], device: torch.device) -> None:
    """``pixel_backend=triton`` needs the triton package, and a CUDA device or Triton's interpreter."""
    if not any(c.config.pixel_refine and c.config.pixel_backend == "triton" for c in combinations):
        return
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError(
            f"config value pixel_backend='triton' is invalid on {device.type}: the Triton kernels need a CUDA "
            "device (or TRITON_INTERPRET=1, Triton's slow interpreter); use pixel_backend=auto or torch"
        )
    if importlib.util.find_spec("triton") is None:
        raise ConfigError("config value pixel_backend='triton' needs the triton package (torch's CUDA wheels bring it)")


def _output_folders(args: argparse.Namespace, plan: RunPlan) -> list[tuple[str, object]]:
    """Every folder the run writes: beside and in ``--output`` / ``--save_predictions``, per (setting, dataset)."""
    folders = []
    for flag, root in (("--output", args.output), ("--save_predictions", args.save_predictions)):
        if root is None:
            continue
        folders += [(flag, root.absolute().parent), (flag, root)]  # staging and lock beside, results in it
        for combination in plan.combinations:
            for key in plan.keys:
                folder = root / relative_folder(plan, combination, key)
                folders.append((flag, folder))
                if flag == "--output" and args.save_visualisations:
                    folders.append(("--save_visualisations", folder / "visualisations"))
    return folders


def preflight(args: argparse.Namespace) -> RunPlan:
    """Check the whole run before any output is touched or any model loaded.

    Raises:
        ConfigError, DatasetError, ImportError, ValueError, OutputLocationError: one line naming the bad input.
    """
    combinations = plan_combinations(args.config, args.overrides, args.sweep)
    keys = dataset_keys(args.dataset)
    roots = list(dict.fromkeys(str(c.config.data_root) for c in combinations))
    datasets = build_datasets(keys, roots)
    for mode in dict.fromkeys(str(c.config.wandb.mode) for c in combinations):
        check_wandb(mode)
    set_collective_timeout(combinations[0].config.dist_timeout)
    device = setup_distributed(combinations[0].config.device)
    _check_pixel_backend(combinations, device)
    _check_models(combinations, device)
    plan = RunPlan(combinations, keys, datasets, device)
    check_output_locations(_output_folders(args, plan))
    return plan


class _LogFile(logging.FileHandler):
    """The run's log file; a write error (a full disk) ends the run like any other, naming the file."""

    def flush(self) -> None:
        with naming_path(self.baseFilename):
            super().flush()

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError) and error.errno is not None:
            raise type(error)(error.errno, error.strerror, error.filename or self.baseFilename) from error
        super().handleError(record)


def _setup_logging(log_file: str | None) -> None:
    """Results to stdout (rank 0) and to the run's log file (staged, appended to ``eval.log`` at the end)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file is not None:
        handlers.append(_LogFile(log_file, mode="w"))
    for handler in logger.handlers:
        handler.close()
    logger.handlers.clear()
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if is_main_process() else logging.WARNING)
    logger.propagate = False


class _Run:
    """State of one run: the plan, the staged output folders, the records gathered so far."""

    def __init__(self, args: argparse.Namespace, plan: RunPlan) -> None:
        self.args, self.plan = args, plan
        main = is_main_process()
        # one run per folder: rank 0 locks them and removes stale staging (notes: one log line each)
        folders = [("--output", args.output), ("--save_predictions", args.save_predictions)]
        self.locks, self.notes = lock_outputs(folders, main)
        self.output = self.predictions = None
        try:
            self.output = None if args.output is None else StagedFolder.create(args.output, main)
            self.predictions = (
                None if args.save_predictions is None else StagedFolder.create(args.save_predictions, main)
            )
        except BaseException:
            self.discard()
            raise
        self.records: dict[str, dict[str, dict]] = {c.name: {} for c in plan.combinations}
        self.environment = environment_record()
        self.passes: dict[str, list[list[str]]] = {}  # data root -> dataset keys of each pass

    def relative(self, combination: Combination, key: str) -> str:
        """Folder of one (setting, dataset) inside the output folders ("" = the folder itself)."""
        return relative_folder(self.plan, combination, key)

    def done(self, combination: Combination, key: str) -> dict | None:
        """The finished record of ``--resume``, or None."""
        if not self.args.resume or self.output is None:
            return None
        path = self.output.final / self.relative(combination, key) / "results.json"
        if not is_complete(path, combination.config, self.args.limit, self.args.measure_boundary):
            return None
        return json.loads(path.read_text())

    def outputs(self, combination: Combination, key: str, dataset) -> PredictionOutputs:
        rel = self.relative(combination, key)
        save_dir = None if self.predictions is None else self.predictions.path(rel)
        visualise = None
        if self.args.save_visualisations and self.output is not None and is_main_process():
            from .visualise import OverlayWriter

            folder = self.output.path(rel, "visualisations")
            visualise = OverlayWriter(folder, class_names(key, aliases=False), dataset, self.args.save_visualisations)
        return PredictionOutputs(save_dir, visualise)

    def record(self, combination: Combination, key: str, result: EvaluationResult) -> dict:
        """Summarise one (setting, dataset), print it, stage its results.json."""
        config = combination.config
        summary = summarize(result.iou_sums, result.boundary_sums, class_names(key, aliases=False))
        method = method_label(config)
        record = {
            "dataset": key,
            "method": method,
            "setting": combination.name or None,
            **{name: summary[name] for name in ("mIoU", "IoU", "boundary_mIoU", "aAcc")},
            "boundary_IoU": summary["boundary_IoU"] or None,
            "num_images": result.num_images,
            "limit": self.args.limit,
            "seconds_per_image": result.seconds_per_image,
            "images_per_second": result.images_per_second,
            "config": OmegaConf.to_container(config, resolve=True),
            **self.environment,
        }
        if is_main_process():
            title = f"{combination.name} | {key}" if combination.name else key
            logger.info(f"\n{title} ({method}, {result.num_images} images)")
            logger.info(format_table(summary))
            if self.output is not None:
                atomic_write_text(self.output.path(self.relative(combination, key), "results.json"), _dumps(record))
        return record

    def publish(self, combination: Combination, key: str, publication: Publication | None = None) -> None:
        """Predictions, overlays and results.json of one (setting, dataset): all of them, or none."""
        if is_main_process():
            with all_or_nothing(publication) as moves:
                for folder in (self.predictions, self.output):
                    if folder is not None:
                        folder.publish(self.relative(combination, key), publication=moves)

    def discard(self) -> None:
        if is_main_process():
            for folder in (self.output, self.predictions):
                if folder is not None:
                    folder.discard()
            for lock in self.locks:
                lock.release()


def relative_folder(plan: RunPlan, combination: Combination, key: str) -> str:
    """Folder of one (setting, dataset) inside the output folders ("" = the folder itself)."""
    parts = [combination.folder] if plan.is_sweep else []
    if plan.is_sweep or len(plan.keys) > 1:
        parts.append(key)
    return "/".join(parts)


def _dumps(value: object) -> str:
    return json.dumps(value, indent=2) + "\n"


def _dataset_passes(run: _Run, root: str) -> list[list[str]]:
    """The datasets under ``root`` grouped into shared passes (computed, and the fallbacks logged, once)."""
    if root not in run.passes:
        passes, notes = plan_passes(run.plan.keys, {key: run.plan.datasets[(root, key)] for key in run.plan.keys})
        for note in notes:
            logger.info(note)
        run.passes[root] = passes
    return run.passes[root]


def _pending(run: _Run, group: list[Combination], key: str) -> list[int]:
    """Indices of the settings of ``group`` still to evaluate on ``key`` (the others are complete: --resume)."""
    todo = []
    for i, combination in enumerate(group):
        record = run.done(combination, key)
        if record is None:
            todo.append(i)
        else:
            run.records[combination.name][key] = record
            logger.info(f"--resume: {' '.join([combination.name, key]).strip()} is complete, skipped")
    return todo


def _members(
    run: _Run, group: list[Combination], todo: dict[str, list[int]], wanted: list[int], backbones
) -> list[PassMember]:
    """The datasets of one pass, their classes set on the backbones one list after another (score columns)."""
    root = str(group[0].config.data_root)
    members, offset = [], 0
    for key, alias_to_class in zip(todo, backbones.set_class_groups([class_names(key) for key in todo])):
        dataset = run.plan.datasets[(root, key)]
        columns = ClassColumns(slice(offset, offset + len(alias_to_class)), alias_to_class)
        offset += len(alias_to_class)
        outputs = [run.outputs(group[i], key, dataset) for i in todo[key]]
        settings = [wanted.index(i) for i in todo[key]]  # positions among the pass's settings
        members.append(PassMember(dataset, len(class_names(key)), columns, settings, outputs, key))
    return members


def _evaluate_group(run: _Run, group: list[Combination], backbones) -> None:
    """One pass per set of datasets sharing images, for a group of settings that share the backbone features."""
    args, plan = run.args, run.plan
    first = group[0].config
    segmentor = Segmentor(backbones, SegmentorSettings.from_config(first))
    for pass_keys in _dataset_passes(run, str(first.data_root)):
        todo = {key: _pending(run, group, key) for key in pass_keys}
        keys = [key for key in pass_keys if todo[key]]
        if not keys:
            continue
        make_deterministic(first.seed, plan.device)
        apply_precision(first.strict_float32)  # the group's precision mode (a sweep may vary it)
        wanted = sorted({i for key in keys for i in todo[key]})  # the settings of the pass
        results = evaluate_pass(
            segmentor,
            _members(run, group, {key: todo[key] for key in keys}, wanted, backbones),
            [SegmentorSettings.from_config(group[i].config) for i in wanted],
            measure_boundary=args.measure_boundary,
            num_workers=first.num_workers,
            image_batch=args.image_batch,
            limit=args.limit,
            description="+".join(keys),
        )
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        timing = results[0][0]
        shared = f" (one pass shared by {', '.join(keys)}: same image files)" if len(keys) > 1 else ""
        logger.info(
            f"{'+'.join(keys)}: {timing.num_images} images x {len(wanted)} setting(s) in {timing.seconds:.1f} s, "
            f"{timing.images_per_second:.2f} images/s over {world} process(es){shared}"
        )
        for key, member_results in zip(keys, results):
            for i, result in zip(todo[key], member_results):
                run.records[group[i].name][key] = run.record(group[i], key, result)
                if plan.is_sweep:  # each setting's results are a whole run of their own: --resume builds on them
                    run.publish(group[i], key)


def _finish(run: _Run) -> None:
    """Tables on stdout; summary, tables, configs and the log published (rank 0)."""
    plan, output = run.plan, run.output
    if plan.is_sweep:
        markdown, table_csv = format_sweep_tables(run.records, plan.keys, run.args.measure_boundary)
        logger.info("\n" + markdown)
        summary = {"settings": list(run.records), "datasets": plan.keys, "rows": {}}
        for name, records in run.records.items():
            method = next(iter(records.values()))["method"]
            summary["rows"][name] = summary_record(method, records, PAPER_ORDER)
        if output is not None:
            atomic_write_text(output.path("sweep.md"), markdown)
            atomic_write_text(output.path("sweep.csv"), table_csv)
            for combination in plan.combinations:
                atomic_write_text(output.path(combination.folder, "config.yaml"), OmegaConf.to_yaml(combination.config))
    else:
        records = run.records[""]
        method = next(iter(records.values()))["method"]
        for metric in ["mIoU"] + (["boundary_mIoU"] if run.args.measure_boundary else []):
            logger.info(f"\n{metric}\n" + format_paper_table(method, records, PAPER_ORDER, metric))
        summary = summary_record(method, records, PAPER_ORDER)
        if output is not None:
            atomic_write_text(output.path("config.yaml"), OmegaConf.to_yaml(plan.combinations[0].config))
    with all_or_nothing() as publication:  # a single run replaces earlier results all at once, or not at all
        if not plan.is_sweep:
            for key in plan.keys:
                run.publish(plan.combinations[0], key, publication)
        if output is not None:
            atomic_write_text(output.path("summary.json"), _dumps(summary))
            output.publish(publication=publication)


# What only picks a head on the loaded weights (LPOSSBackbones.set_heads), per model section.
_PROXY_KEYS = ("proxy_features", "proxy_beta", "proxy_gamma")
_HEAD_KEYS = {"clip": ("head", *_PROXY_KEYS), "dino": ("features",)}


def _weights_key(model) -> str:
    """The model config less what only picks a head (``clip.head``, ProxyCLIP's settings, ``dino.features``): equal
    keys, equal weights."""
    weights = OmegaConf.to_container(model, resolve=True)
    for section, keys in _HEAD_KEYS.items():
        for key in keys:
            weights[section].pop(key, None)
    return json.dumps(weights, sort_keys=True)


def run(args: argparse.Namespace, plan: RunPlan) -> None:
    """Evaluate every (setting, dataset) of a checked plan; see the module docstring for the order."""
    from lposs.models import LPOSSBackbones  # heavy imports only once the inputs are known to be fine

    state = _Run(args, plan)
    main = is_main_process()
    _setup_logging(str(state.output.path("eval.log")) if state.output is not None and main else None)
    for note in state.notes:
        logger.info(note)
    try:
        method = method_label(plan.combinations[0].config)
        wandb_run = start_wandb(plan.combinations[0].config, method, plan.keys) if main else None
        loaded: dict[str, object] = {}  # groups that differ in windows, resizing or heads share the weights
        for group in group_by_encoding(plan.combinations):
            model = group[0].config.model
            weights_key = _weights_key(model)
            if weights_key not in loaded:
                loaded.clear()  # one set of models in memory at a time
                make_deterministic(group[0].config.seed, plan.device)  # random-init weights too (tests, benchmarks)
                loaded[weights_key] = LPOSSBackbones.from_config(model, plan.device).eval()
            proxy = {key: model.clip[key] for key in _PROXY_KEYS}
            loaded[weights_key].set_heads(model.clip.head, model.dino.features, proxy)
            _evaluate_group(state, group, loaded[weights_key])
        if main:
            _finish(state)
            if wandb_run is not None:
                wandb_run.log(
                    {f"{n or 'run'}/{k}/mIoU": r["mIoU"] for n, rs in state.records.items() for k, r in rs.items()}
                )
                wandb_run.finish()
        _setup_logging(None)  # closes the staged log file
        if main and state.output is not None:
            state.output.append_to("eval.log")
    finally:
        try:
            _setup_logging(None)  # closing the log file can fail too (a full disk)
        finally:
            state.discard()
