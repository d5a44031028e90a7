"""The bookkeeping of one run: its log, its staged output folders and locks, the records gathered so far.

:class:`RunState` holds what a run has computed and where it will go: the locked and staged ``--output`` and
``--save_predictions`` folders (:mod:`lposs.evaluation.run_output`), one record per (setting, dataset), and
publishes each (setting, dataset) whole. :mod:`lposs.evaluation.runner` drives it.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from lposs.datasets import class_names, protocol_class_names

from .loop import EvaluationResult, PredictionOutputs, is_main_process
from .metrics import format_table, summarize
from .output_recovery import lock_outputs
from .preflight import RunPlan, relative_folder
from .reporting import atomic_write_text, environment_record, method_label, naming_path
from .run_output import Publication, PublishError, StagedFolder, all_or_nothing
from .sweep import Combination, dataset_change, is_complete

__all__ = ["LogFile", "RunReport", "RunState", "dumps", "logger", "setup_logging"]

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


@dataclass
class RunReport:
    """What a run has done to its output folders, for the line that ends it (``main_eval.py``)."""

    published: bool = False  # the final publish committed: the new results are in place
    settings_published: bool = False  # a sweep moved completed (setting, dataset) results into place
    kept: list[Path] = field(default_factory=list)  # staging folders left in place (where, for the message)

    def aftermath(self) -> str:
        """``staging removed, earlier results unchanged``, or what is true instead."""
        if self.published:
            return "the new results were published"
        staging = (
            "staging removed" if not self.kept else f"this run's files are kept in {', '.join(map(str, self.kept))}"
        )
        earlier = (
            "completed settings are in place, earlier results otherwise unchanged"
            if self.settings_published
            else "earlier results unchanged"
        )
        return f"{staging}, {earlier}"


class RunState:
    """State of one run: the plan, the staged output folders, the records gathered so far."""

    def __init__(self, args: argparse.Namespace, plan: RunPlan, report: RunReport | None = None) -> None:
        self.args, self.plan = args, plan
        self.report = RunReport() if report is None else report
        main = is_main_process()
        # one run per folder: rank 0 locks them and removes stale staging (notes: one log line each)
        folders = [("--output", args.output), ("--save_predictions", args.save_predictions)]
        self.locks, self.notes = lock_outputs(folders, main)
        self.output = self.predictions = None
        try:
            self.output = None if args.output is None else StagedFolder.create(args.output, main)
            if args.save_predictions is not None:  # every rank writes predictions: every rank must see it
                self.predictions = StagedFolder.create(args.save_predictions, main, "--save_predictions")
            self.records: dict[str, dict[str, dict]] = {c.name: {} for c in plan.combinations}
            self.environment = environment_record()
            self.passes: dict[str, list[list[str]]] = {}  # data root -> dataset keys of each pass
            self.evaluated: set[tuple[str, str]] = set()  # (setting, dataset) pairs evaluated by this run
        except BaseException:
            self.discard()
            raise

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
        record = json.loads(path.read_text())
        change = dataset_change(record.get("dataset_file"), self._dataset_content(combination, key))
        change = change or _class_files_change(record.get("class_files"), self._class_files_content(combination, key))
        if change is not None:
            logger.info(f"--resume: {' '.join([combination.name, key]).strip()} is recomputed: {change}")
            return None
        return record

    def _dataset_content(self, combination: Combination, key: str) -> dict | None:
        """The resolved content of a dataset file (``UserDataset.resolved_content``), None for a benchmark."""
        dataset = self.plan.datasets[(str(combination.config.data_root), key)]
        content = getattr(dataset, "resolved_content", None)
        return None if content is None else content()

    @staticmethod
    def _class_files_content(combination: Combination, key: str) -> dict | None:
        """The folder and prompts of a run with ``class_files_dir`` (the user's class files), None without."""
        config = combination.config
        if config.class_files_dir is None:
            return None
        prompts = protocol_class_names(key, str(config.class_names), config.class_files_dir)
        return {"folder": str(config.class_files_dir), "prompts": prompts}

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
        content = self._dataset_content(combination, key)
        if content is not None:  # a dataset file: what --resume compares besides the config
            record["dataset_file"] = content
        class_files = self._class_files_content(combination, key)
        if class_files is not None:  # the user's class files: --resume compares what they say, not just their folder
            record["class_files"] = class_files
        self.evaluated.add((combination.name, key))
        if is_main_process():
            title = f"{combination.name} | {key}" if combination.name else key
            logger.info(f"\n{title} ({method}, {result.num_images} images)")
            logger.info(format_table(summary))
            if self.output is not None:
                atomic_write_text(self.output.path(self.relative(combination, key), "results.json"), dumps(record))
        return record

    def publish(self, combination: Combination, key: str, publication: Publication | None = None) -> None:
        """Predictions, overlays and results.json of one (setting, dataset): all of them, or none.

        Raises:
            PublishError: a move failed (everything put back), or rank 0 sees fewer prediction files than the
                ranks wrote (they wrote where it cannot see: node-local storage).
        """
        if not is_main_process():
            return
        self._check_predictions(combination, key)
        with all_or_nothing(publication) as moves:
            for folder in (self.predictions, self.output):
                if folder is not None:
                    folder.publish(self.relative(combination, key), publication=moves)

    def _check_predictions(self, combination: Combination, key: str) -> None:
        """One prediction file per image is staged, whichever rank wrote it."""
        if self.predictions is None or (combination.name, key) not in self.evaluated:
            return  # --resume: its predictions are in place already
        rel = self.relative(combination, key)
        found, written = len(self.predictions.files(rel)), self.records[combination.name][key]["num_images"]
        if found != written:
            for folder in (self.output, self.predictions):  # a failed publish keeps the computed results
                if folder is not None:
                    folder.keep = True
            raise PublishError(
                errno.ENOENT,
                f"{found} of the {written} prediction files the ranks wrote are in the staging folder; the others "
                "were written where rank 0 cannot see them (--save_predictions must be on storage every node shares)",
                str(self.predictions.final / rel),
            )

    def discard(self) -> None:
        """Remove the staging folders (rank 0; the kept ones go to the report), then free the locks."""
        if is_main_process():
            try:
                for folder in (self.output, self.predictions):
                    kept = None if folder is None else folder.discard()
                    self.report.kept += [] if kept is None else [kept]
            finally:
                for lock in self.locks:
                    lock.release()


def dumps(value: object) -> str:
    """JSON as the run writes it: indented, one trailing newline."""
    return json.dumps(value, indent=2) + "\n"


def _class_files_change(recorded: object, current: dict | None) -> str | None:
    """What changed in the user's class files (``class_files_dir``) since a results.json recorded their prompts."""
    if current is None or (isinstance(recorded, dict) and recorded.get("prompts") == current["prompts"]):
        return None
    return f"the class files in {current['folder']} changed (or were not recorded) since the results were written"
