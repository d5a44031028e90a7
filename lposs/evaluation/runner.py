"""The evaluation run behind ``main_eval.py``: pre-flight checks, then datasets x settings, then the tables.

Order of a run (each step in one module):

1. pre-flight (:func:`lposs.evaluation.preflight.preflight`): every config of the grid, every dataset, every
   model config, wandb and the output folders are checked; nothing under ``--output`` is touched before this
   passes;
2. :func:`run` locks and stages the output folders (:class:`lposs.evaluation.run_state.RunState`), loads the
   backbones once per set of weights, and makes one pass over each dataset per group of settings that share
   backbone features (:mod:`lposs.evaluation.sweep`), datasets that list the same images sharing one pass
   (:mod:`lposs.evaluation.shared_passes`, :func:`lposs.evaluation.loop.evaluate_pass`);
3. :func:`_finish`: summary, tables, config and log published at the end, all or nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from lposs.datasets import class_names, protocol_class_names
from lposs.segmentation import Segmentor, SegmentorSettings
from lposs.segmentation.segmentor import ClassColumns

from .device import apply_precision
from .loop import PassMember, evaluate_pass, is_main_process
from .preflight import PAPER_ORDER, RunPlan, dataset_keys, preflight, setup_distributed
from .reporting import atomic_write_text, format_paper_table, method_label, start_wandb, summary_record
from .run_output import all_or_nothing
from .run_state import RunReport, RunState, dumps, logger, setup_logging
from .shared_passes import plan_passes
from .sweep import Combination, format_sweep_tables, group_by_encoding

__all__ = ["PAPER_ORDER", "RunPlan", "RunReport", "dataset_keys", "preflight", "run", "setup_distributed"]


def make_deterministic(seed: int, device: torch.device) -> None:
    """Same config and seed -> bit-identical metrics (CPU always; CUDA with deterministic kernels)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def _dataset_passes(run: RunState, root: str) -> list[list[str]]:
    """The datasets under ``root`` grouped into shared passes (computed, and the fallbacks logged, once)."""
    if root not in run.passes:
        passes, notes = plan_passes(run.plan.keys, {key: run.plan.datasets[(root, key)] for key in run.plan.keys})
        for note in notes:
            logger.info(note)
        run.passes[root] = passes
    return run.passes[root]


def _pending(run: RunState, group: list[Combination], key: str) -> list[int]:
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
    run: RunState, group: list[Combination], todo: dict[str, list[int]], wanted: list[int], backbones
) -> list[PassMember]:
    """The datasets of one pass, their classes set on the backbones one list after another (score columns)."""
    config = group[0].config
    root, source, folder = str(config.data_root), str(config.class_names), config.class_files_dir
    members, offset = [], 0
    prompts = [protocol_class_names(key, source, folder) for key in todo]  # this toolkit's lists, or a baseline's files
    for key, alias_to_class in zip(todo, backbones.set_class_groups(prompts)):
        dataset = run.plan.datasets[(root, key)]
        columns = ClassColumns(slice(offset, offset + len(alias_to_class)), alias_to_class)
        offset += len(alias_to_class)
        outputs = [run.outputs(group[i], key, dataset) for i in todo[key]]
        settings = [wanted.index(i) for i in todo[key]]  # positions among the pass's settings
        members.append(PassMember(dataset, len(class_names(key)), columns, settings, outputs, key))
    return members


def _evaluate_group(run: RunState, group: list[Combination], backbones) -> None:
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
                    run.report.settings_published = True


def _finish(run: RunState) -> None:
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
    publication = None
    try:
        with all_or_nothing() as publication:  # a single run replaces earlier results all at once, or not at all
            if not plan.is_sweep:
                for key in plan.keys:
                    run.publish(plan.combinations[0], key, publication)
            if output is not None:
                atomic_write_text(output.path("summary.json"), dumps(summary))
                output.publish(publication=publication)
    finally:  # also when a signal held over the commit arrives at its end: the new results are in place then
        run.report.published = publication is not None and publication.committed


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


def run(args: argparse.Namespace, plan: RunPlan, report: RunReport | None = None) -> None:
    """Evaluate every (setting, dataset) of a checked plan; see the module docstring for the order.

    ``report`` (filled in as the run goes, also when it fails) says what was published and what was kept.
    """
    from lposs.models import LPOSSBackbones  # heavy imports only once the inputs are known to be fine

    state = RunState(args, plan, report)  # on failure it removes what it made and frees the locks itself
    main = is_main_process()
    try:
        setup_logging(str(state.output.path("eval.log")) if state.output is not None and main else None)
        for note in state.notes:
            logger.info(note)
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
        setup_logging(None)  # closes the staged log file
        if main and state.output is not None:
            state.output.append_to("eval.log")
    finally:
        try:
            setup_logging(None)  # closing the log file can fail too (a full disk)
        finally:
            state.discard()
