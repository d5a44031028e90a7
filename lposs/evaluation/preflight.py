"""Pre-flight of a run: the whole plan checked before any output is touched or any model loaded.

Every config of the grid, every dataset, wandb, the device and process group, the pixel backend, every model
config and every output folder (:mod:`lposs.outputs.checks`) is checked here; a problem is one line
naming the bad input (exit 2 in ``main_eval.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from lposs.datasets import DatasetError, build_dataset, protocol_class_names, resolve_keys
from lposs.outputs.checks import check_output_locations, check_staging

from .config import ConfigError
from .distributed import init_process_group, set_collective_timeout
from .reporting import check_wandb
from .sweep import Combination, plan_combinations

__all__ = [
    "PAPER_ORDER",
    "RunPlan",
    "dataset_keys",
    "preflight",
    "prepare_device",
    "relative_folder",
    "setup_distributed",
]

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
    """``'all'`` or a comma list of benchmark keys and dataset files (paths or names) -> dataset keys, checked."""
    keys = list(PAPER_ORDER) if spec == "all" else resolve_keys([k.strip() for k in spec.split(",") if k.strip()])
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
    """Every folder the run writes: ``--output`` / ``--save_predictions`` and their (setting, dataset) folders."""
    folders = []
    for flag, root in (("--output", args.output), ("--save_predictions", args.save_predictions)):
        if root is None:
            continue
        folders.append((flag, root))
        for combination in plan.combinations:
            for key in plan.keys:
                folder = root / relative_folder(plan, combination, key)
                folders.append((flag, folder))
                if flag == "--output" and args.save_visualisations:
                    folders.append(("--save_visualisations", folder / "visualisations"))
    return folders


def prepare_device(combinations: list[Combination]) -> torch.device:
    """This rank's device, in torchrun's process group (with ``dist_timeout``); pixel backend and models checked."""
    set_collective_timeout(combinations[0].config.dist_timeout)
    device = setup_distributed(combinations[0].config.device)
    _check_pixel_backend(combinations, device)
    _check_models(combinations, device)
    return device


def preflight(args: argparse.Namespace) -> RunPlan:
    """Check the whole run before any output is touched or any model loaded.

    Raises:
        ConfigError, DatasetError, ImportError, ValueError, OutputLocationError: one line naming the bad input.
    """
    keys = dataset_keys(args.dataset)
    combinations = plan_combinations(args.config, args.overrides, args.sweep, keys[0] if len(keys) == 1 else None)
    check_per_dataset(args.config, combinations, keys)
    roots = list(dict.fromkeys(str(c.config.data_root) for c in combinations))
    datasets = build_datasets(keys, roots)
    for mode in dict.fromkeys(str(c.config.wandb.mode) for c in combinations):
        check_wandb(mode)
    device = prepare_device(combinations)
    plan = RunPlan(combinations, keys, datasets, device)
    folders = _output_folders(args, plan)
    check_output_locations(folders)
    for flag, root in (("--output", args.output), ("--save_predictions", args.save_predictions)):
        if root is not None:  # staged beside or inside it (a mount point): the publish's renames must work there
            check_staging(flag, root, [folder for _, folder in folders])
    return plan


def check_per_dataset(config_name: str, combinations: list[Combination], keys: list[str]) -> None:
    """One dataset at a time for a config whose ``per_dataset`` table covers some of them; the class files of the
    configured ``class_names`` exist for every dataset.

    Raises:
        ConfigError: several datasets with a per-dataset table; DatasetError: a class file missing or wrong.
    """
    if len(keys) > 1:
        covered = sorted({key for c in combinations for key in c.config.per_dataset if key in keys})
        if covered:
            raise ConfigError(
                f"config {config_name} sets per-dataset values (per_dataset) for {', '.join(covered)}: evaluate one "
                "--dataset at a time (tools/reproduce.py runs every dataset of an own-protocol config)"
            )
    for source, folder in dict.fromkeys((str(c.config.class_names), c.config.class_files_dir) for c in combinations):
        for key in keys:
            protocol_class_names(key, source, folder)


def relative_folder(plan: RunPlan, combination: Combination, key: str) -> str:
    """Folder of one (setting, dataset) inside the output folders ("" = the folder itself)."""
    parts = [combination.folder] if plan.is_sweep else []
    if plan.is_sweep or len(plan.keys) > 1:
        parts.append(key)
    return "/".join(parts)
