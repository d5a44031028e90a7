"""The test split of a dataset described by a file (:mod:`lposs.datasets.custom`), as an mmseg ``CustomDataset``.

Images load exactly as the benchmarks' do (the pipeline of ``configs/datasets/_load_image.py``), so a dataset
file over the same image files shares their pass and their numbers. Labels load through
:func:`lposs.datasets.labels.read_label`. Every sample is checked when the dataset is built, from the file
headers alone (before any weights load): its label exists, can be read as class indices, and has its image's size.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mmcv
from mmseg.datasets import CustomDataset
from PIL import Image

from lposs.files.walk import walk_once

from .custom import DatasetFile
from .errors import DatasetError, read_text_file
from .image_files import decoded_image_size
from .labels import label_mode_problem, palette_problem, read_label

__all__ = ["UserDataset", "build_user_dataset", "check_samples"]

_LOAD_IMAGE = Path(__file__).resolve().parents[1] / "configs" / "datasets" / "_load_image.py"
_DOCS_HINT = "see docs/datasets.md, section 'Your own dataset'"


class _LabelLoader:
    """The dataset's ``gt_seg_map_loader``: :func:`read_label` of the sample's label file."""

    def __init__(self, spec: DatasetFile) -> None:
        self.spec = spec

    def __call__(self, results: dict) -> dict:
        path = Path(results["seg_prefix"]) / results["ann_info"]["seg_map"]
        results["gt_semantic_seg"] = read_label(path, self.spec)
        return results


class UserDataset(CustomDataset):
    """mmseg ``CustomDataset`` (test mode) of a :class:`DatasetFile`; ``CLASSES`` are the classes' first names."""

    def __init__(self, spec: DatasetFile, data_root: str | Path) -> None:
        self.spec = spec
        base = spec.base(data_root)
        super().__init__(
            pipeline=mmcv.Config.fromfile(str(_LOAD_IMAGE)).test_pipeline,
            img_dir=str(base / spec.images),
            ann_dir=str(base / spec.labels),
            img_suffix=spec.image_suffix,
            seg_map_suffix=spec.label_suffix,
            split=None if spec.split is None else str(base / spec.split),
            test_mode=True,
            classes=spec.class_names(aliases=False),
        )
        self.gt_seg_map_loader = _LabelLoader(spec)
        colours = [spec.palette.get(v) for v in spec.class_values()] if spec.palette else []
        # mmseg draws random colours for a dataset without a palette: None lets the outputs pick theirs
        self.PALETTE = [list(c) for c in colours] if colours and None not in colours else None

    def resolved_content(self) -> dict:
        """What this dataset's results depend on, as JSON: the file's keys as resolved (defaults filled in), its
        classes (a class file read), and its image list (count and a SHA-256 of the names with their labels, in
        order). ``results.json`` records it; ``--resume`` recomputes a result whose record differs."""
        spec = self.spec
        keys = {
            "images": spec.images,
            "labels": spec.labels,
            "relative_to": spec.relative_to,
            "image_suffix": spec.image_suffix,
            "label_suffix": spec.label_suffix,
            "split": spec.split,
            "ignore_index": spec.ignore_index,
            "reduce_zero_label": spec.reduce_zero_label,
            "palette": None if spec.palette is None else {str(v): list(c) for v, c in sorted(spec.palette.items())},
        }
        names = [[info["filename"], info["ann"]["seg_map"]] for info in self.img_infos]
        digest = hashlib.sha256(json.dumps(names).encode()).hexdigest()
        return {
            "file": str(spec.source),
            "keys": keys,
            "classes": list(spec.classes),
            "images": {"count": len(names), "sha256": digest},
        }

    def load_annotations(self, img_dir: str, img_suffix: str, ann_dir: str, seg_map_suffix: str, split) -> list:
        """Samples in split-file order, else every image under ``img_dir`` (recursively, hidden names skipped)
        sorted by path; a label is the image's path with ``label_suffix`` for ``image_suffix``."""
        if split is not None:
            text = read_text_file(Path(split), "split file")
            names = [line.strip() for line in text.splitlines() if line.strip()]
        else:
            names = []
            for root, folders, files in walk_once(img_dir):  # links followed, each real folder once
                folders[:] = [name for name in folders if not name.startswith(".")]
                here = Path(root).relative_to(img_dir)
                names += [
                    (here / name[: -len(img_suffix)]).as_posix()
                    for name in files
                    if name.endswith(img_suffix) and not name.startswith(".")
                ]
            names.sort()
        return [{"filename": name + img_suffix, "ann": {"seg_map": name + seg_map_suffix}} for name in names]


def _sample_problem(image: Path, label: Path, spec: DatasetFile) -> str | None:
    """What is wrong with one sample, from the file headers (one line naming the file), or None."""
    if not image.is_file():
        return f"image not found: {image}" + (f" (listed in {spec.split})" if spec.split else "")
    if not label.is_file():
        return f"label not found for image {image}: expected {label}"
    try:
        with Image.open(label) as opened:
            mode, (width, height) = opened.mode, opened.size
            problem = label_mode_problem(mode, label, spec.palette is not None) or palette_problem(
                opened, label, spec.palette
            )
    except Exception as error:
        return f"cannot read label {label}: {type(error).__name__}: {error}"
    if problem is not None:
        return problem
    try:
        size = decoded_image_size(image)
    except DatasetError as error:
        return str(error)
    if (height, width) != size:
        return f"label {label} is {height}x{width} (HxW) but its image {image} is {size[0]}x{size[1]}"
    return None


def check_samples(dataset: UserDataset) -> None:
    """Check every sample's files (see the module docstring).

    Raises:
        DatasetError: one line naming the first bad file, and how many other samples have a problem.
    """
    problems = []
    for info in dataset.img_infos:
        image, label = Path(dataset.img_dir) / info["filename"], Path(dataset.ann_dir) / info["ann"]["seg_map"]
        problem = _sample_problem(image, label, dataset.spec)
        if problem is not None:
            problems.append(problem)
    if problems:
        more = f" ({len(problems) - 1} more sample(s) with problems)" if len(problems) > 1 else ""
        raise DatasetError(f"dataset '{dataset.spec.name}': {problems[0]}{more}")


def _require(spec: DatasetFile, what: str, path: Path, is_dir: bool) -> None:
    if not (path.is_dir() if is_dir else path.is_file()):
        raise FileNotFoundError(
            f"dataset '{spec.name}' ({spec.source}): {what} not found: expected {path}; {_DOCS_HINT}"
        )


def build_user_dataset(spec: DatasetFile, data_root: str | Path) -> UserDataset:
    """The checked test split of a dataset file.

    Args:
        spec: from :func:`lposs.datasets.custom.load_dataset_file`.
        data_root: the folders' base when the file says ``relative_to: data_root``.

    Raises:
        FileNotFoundError: the image or label folder, or the split file, is missing.
        DatasetError: no image, or a sample with a problem (see :func:`check_samples`).
    """
    base = spec.base(data_root)
    _require(spec, "image folder", base / spec.images, is_dir=True)
    _require(spec, "label folder", base / spec.labels, is_dir=True)
    if spec.split is not None:
        _require(spec, "split file", base / spec.split, is_dir=False)
    dataset = UserDataset(spec, data_root)
    if len(dataset) == 0:
        where = spec.split or base / spec.images
        raise DatasetError(
            f"dataset '{spec.name}' ({spec.source}): no image with suffix '{spec.image_suffix}' in {where}"
        )
    check_samples(dataset)
    return dataset
