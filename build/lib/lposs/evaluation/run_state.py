"""The bookkeeping of one run: its log, its staged output folders and locks, the records gathered so far.

:class:`RunState` holds what a run has computed and where it will go: the locked and staged ``--output`` and
``--save_predictions`` folders (:mod:`lposs.evaluation.run_output`), one record per (setting, dataset), and
publishes each (setting, dataset) whole. :mod:`lposs.evaluation.runner` drives it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from omegaconf import OmegaConf

from lposs.datasets import class_names

from .loop import EvaluationResult, PredictionOutputs, is_main_process
from .metrics import format_table, summarize
from .preflight import RunPlan, relative_folder
from .reporting import atomic_write_text, environment_record, method_label, naming_path
from .run_output import Publication, StagedFolder, all_or_nothing, lock_outputs
from .sweep import Combination, is_complete

__all__ = ["LogFile", "RunState", "dumps", "logger", "setup_logging"]

logger = logging.getLogger("lposs")


class LogFile(logging.FileHandler):
    """The run's log file; a write error (a full disk) ends the run like any other, naming the file."""

    def flush(self) -> None:
        with naming_path(self.baseFilename):
            super().flush()

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError) and error.errno is not None:
            raise type(error)(error.errno, error.strerror, error.filename or self.baseFilename) from error
        super().handleError(record)


def setup_logging(log_file: str | None) -> None:
    """Results to stdout (rank 0) and to the run's log file (staged, appended to ``eval.log`` at the end)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file is not None:
        handlers.append(LogFile(log_file, mode="w"))
    for handler in logger.handlers:
        handler.close()
    logger.handlers.clear()
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if is_main_process() else logging.WARNING)
    logger.propagate = False


class RunState:
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
                atomic_write_text(self.output.path(self.relative(combination, key), "results.json"), dumps(record))
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


def dumps(value: object) -> str:
    """JSON as the run writes it: indented, one trailing newline."""
    return json.dumps(value, indent=2) + "\n"
