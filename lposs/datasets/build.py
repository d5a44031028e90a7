"""Build the eight benchmark test splits (mmseg 0.30 datasets), or a dataset described by a file, and load one
image or label from them.

Each benchmark is described by ``configs/datasets/<key>.py`` (mmseg config format, loaded with
``mmcv.Config.fromfile``); its ``data_root`` is relative to the data root given to ``build_dataset``. Wherever a
benchmark key is taken, so is a dataset file: its path (``mydata.yaml``) or its name in the user dataset folder
(:mod:`lposs.datasets.custom`); it is then known by the name it gives.
"""

from __future__ import annotations

from pathlib import Path

import mmcv
import numpy as np
from mmcv.utils import build_from_cfg
from mmseg.datasets import DATASETS, CustomDataset
from mmseg.datasets.pipelines import LoadAnnotations

from . import mmseg_datasets  # noqa: F401  (registers PascalVOCDataset20 and COCOObjectDataset)
from .custom import DatasetFile, resolve_dataset_file, user_dataset_folder
from .errors import DatasetError
from .image_files import decoded_image_size
from .labels import describe_label_value
from .user_dataset import build_user_dataset

DATASET_KEYS = ("voc", "voc20", "context", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "datasets"
_DOCS_HINT = "see docs/datasets.md, section 'Preparing the datasets'"


def dataset_config(key: str) -> mmcv.Config:
    """The mmseg config of dataset ``key`` (one of ``DATASET_KEYS``), from ``configs/datasets/<key>.py``."""
    if key not in DATASET_KEYS:
        raise DatasetError(f"unknown dataset key '{key}'; valid keys: {', '.join(DATASET_KEYS)}")
    return mmcv.Config.fromfile(str(CONFIG_DIR / f"{key}.py"))


def _dataset_file(key: str) -> DatasetFile | None:
    """None for a benchmark key; the dataset file that ``key`` names (a path or a name); else a DatasetError."""
    if key in DATASET_KEYS:
        return None
    spec = resolve_dataset_file(key)
    if spec is None:
        raise DatasetError(
            f"unknown dataset key {key!r}; valid keys: {', '.join(DATASET_KEYS)}, a dataset file (.yaml) or the "
            f"name of one in {user_dataset_folder()} (docs/datasets.md, section 'Your own dataset')"
        )
    if spec.name in DATASET_KEYS:
        raise DatasetError(f"dataset file {spec.source}: name {spec.name!r} is a benchmark's key; give it another")
    return spec


def resolve_keys(tokens: list[str]) -> list[str]:
    """Dataset keys from ``--dataset`` tokens: benchmark keys as they are, dataset files by the name they give.

    A token given twice counts once; two different files giving one name are an error.

    Raises:
        DatasetError, FileNotFoundError: an unknown key, a missing or bad dataset file (one line naming it).
    """
    keys, sources = [], {}
    for token in tokens:
        spec = _dataset_file(token)
        key = token if spec is None else spec.name
        if spec is not None and sources.setdefault(key, spec.source) != spec.source:
            raise DatasetError(f"two dataset files are named {key!r}: {sources[key]} and {spec.source}")
        keys.append(key)
    return list(dict.fromkeys(keys))


def class_names(key: str, aliases: bool = True) -> list[str]:
    """Class names of dataset ``key`` in label order.

    Args:
        key: one of ``DATASET_KEYS``, or a dataset file (its path, or its name; aliases as in its class list,
            ``aliases=False``: the first name of each class).
        aliases: if True, the text prompts exactly as the paper's code writes them: the background row of
            ``voc`` / ``coco_object`` is its alias string (``'sky;wall;...'``, aliases separated by ``;``) and
            the few names the paper spells differently from mmseg are renamed (``prompt_renames`` in the
            dataset config: ``dining table``, ``potted plant``, ``aeroplane``). If False, mmseg's names as they
            are (``'background'``, ``'diningtable'``; handy for printing tables).

    Returns:
        ``num_classes`` strings (21, 20, 60, 59, 81, 171, 19 or 150).
    """
    spec = _dataset_file(key)
    if spec is not None:
        return spec.class_names(aliases)
    cfg = dataset_config(key)
    names = list(DATASETS.get(cfg.dataset_type).CLASSES)
    if not aliases:
        return names
    renames = cfg.get("prompt_renames") or {}
    names = [renames.get(name, name) for name in names]  # the prompts change the text tokens, so the scores
    if cfg.get("background_aliases"):
        names[0] = cfg.background_aliases
    return names


def _require_path(key: str, name: str, path: Path, what: str, is_dir: bool) -> None:
    exists = path.is_dir() if is_dir else path.is_file()
    if not exists:
        raise FileNotFoundError(f"dataset '{key}' ({name}): {what} not found: expected {path}; {_DOCS_HINT} > {name}")


def build_dataset(key: str, data_root: str | Path) -> CustomDataset:
    """Build the test split of dataset ``key`` (an mmseg ``CustomDataset`` in test mode).

    Args:
        key: one of ``DATASET_KEYS``, or a dataset file (its path, or its name): see :mod:`lposs.datasets.custom`.
        data_root: folder holding the datasets (``VOCdevkit/``, ``coco_stuff164k/``, ... as in the README).

    Labels of ``voc20``, ``context59`` and ``ade20k`` are reduced (0 -> 255, others - 1) when loaded, so
    the returned dataset has ``reduce_zero_label=False`` and a label loader that reduces.

    Raises:
        DatasetError: unknown key, or no image found; for a dataset file also a bad file, or the first sample whose
            label is missing, unreadable, RGB without a palette, or not its image's size
            (``lposs.datasets.user_dataset.check_samples``).
        FileNotFoundError: the dataset's image or label folder, or its split file, is missing.
    """
    spec = _dataset_file(key)
    if spec is not None:
        return build_user_dataset(spec, data_root)
    cfg = dataset_config(key)
    test_cfg = cfg.data.test.copy()
    root = Path(data_root) / cfg.data_root
    name = cfg.dataset_name
    _require_path(key, name, root, "dataset folder", is_dir=True)
    _require_path(key, name, root / test_cfg.img_dir, "image folder", is_dir=True)
    _require_path(key, name, root / test_cfg.ann_dir, "label folder", is_dir=True)
    if test_cfg.get("split") is not None:
        _require_path(key, name, root / test_cfg.split, "split file", is_dir=False)
    test_cfg.data_root = str(root)
    dataset = build_from_cfg(test_cfg, DATASETS, dict(test_mode=True))
    if len(dataset) == 0:
        raise DatasetError(
            f"dataset '{key}' ({name}): no image with suffix '{dataset.img_suffix}' listed in "
            f"{test_cfg.get('split') or dataset.img_dir}; {_DOCS_HINT} > {name}"
        )
    if dataset.reduce_zero_label:
        # mmseg 0.30 applies reduce_zero_label inside its metric, not in get_gt_seg_map_by_idx: move it into
        # the label loader so labels come out final, and clear the flag so that mmseg's own
        # pre_eval/evaluate, if used, does not reduce a second time.
        dataset.gt_seg_map_loader = LoadAnnotations(reduce_zero_label=True)
        dataset.reduce_zero_label = False
    return dataset


def _image_path(dataset: CustomDataset, idx: int) -> Path:
    return Path(dataset.img_dir) / dataset.img_infos[idx]["filename"]


def load_image(dataset: CustomDataset, idx: int) -> tuple[np.ndarray, dict]:
    """Load image ``idx`` at its original size through the dataset's pipeline (mmseg LoadImageFromFile).

    Returns:
        image: ``[H, W, 3]`` uint8 RGB (EXIF orientation applied, as cv2 decodes it).
        info: ``filename`` (full path), ``ori_filename`` (relative to the image folder),
            ``ori_shape`` (``(H, W, 3)``).

    Raises:
        FileNotFoundError: the image file is missing.
        DatasetError: the image cannot be decoded.
    """
    path = _image_path(dataset, idx)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        results = dataset.prepare_test_img(idx)
    except Exception as err:  # cv2 returns None on a corrupt file, and mmseg then fails on .shape
        raise DatasetError(f"cannot read image {path}: {type(err).__name__}: {err}") from err
    image = results["img"]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DatasetError(f"image {path} decoded to {image.dtype} {image.shape}; expected uint8 [H, W, 3]")
    info = {k: results[k] for k in ("filename", "ori_filename", "ori_shape")}
    return np.ascontiguousarray(image[..., ::-1]), info  # cv2 decodes BGR


def load_label(dataset: CustomDataset, idx: int, image_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Load label ``idx`` through the dataset's ``get_gt_seg_map_by_idx`` (applies ``reduce_zero_label``).

    Args:
        dataset: from ``build_dataset``.
        idx: sample index.
        image_shape: ``(H, W, ...)`` of the loaded image, to check the label size against; if None,
            the size is read from the image file's header.

    Returns:
        ``[H, W]`` int64 class indices in ``[0, num_classes)``, 255 = ignore.

    Raises:
        FileNotFoundError: the label file is missing.
        DatasetError: the label cannot be decoded, is not single-channel, or its size differs from the image.
    """
    path = Path(dataset.ann_dir) / dataset.img_infos[idx]["ann"]["seg_map"]
    if not path.is_file():
        raise FileNotFoundError(f"label not found: {path}")
    try:
        label = dataset.get_gt_seg_map_by_idx(idx)
    except DatasetError:
        raise  # a dataset file's label loader names the file and the problem itself
    except Exception as err:
        raise DatasetError(f"cannot read label {path}: {type(err).__name__}: {err}") from err
    if label.ndim != 2:
        raise DatasetError(f"label {path} has shape {label.shape}; expected a single-channel [H, W] map")
    if image_shape is None:
        image_shape = decoded_image_size(_image_path(dataset, idx))
    if label.shape != tuple(image_shape[:2]):
        raise DatasetError(
            f"label {path} is {label.shape[0]}x{label.shape[1]} (HxW) but its image "
            f"{_image_path(dataset, idx)} is {image_shape[0]}x{image_shape[1]}"
        )
    return label.astype(np.int64)


def stray_labels(dataset: CustomDataset, idx: int, label: np.ndarray) -> dict | None:
    """Label values of sample ``idx`` outside the dataset's classes (other than 255), or None when there are none.

    They are left out of the label areas, as mmsegmentation's metric does; callers report them once per dataset.

    Args:
        label: ``[H, W]`` from :func:`load_label`.

    Returns:
        ``{"file": label path, "pixels": count, "values": up to 5 distinct stray values}``, or None (values as text:
        numbers, or the colours of RGB labels that a dataset file's palette lacks).
    """
    stray = label[(label != 255) & ((label < 0) | (label >= len(dataset.CLASSES)))]
    if stray.size == 0:
        return None
    path = Path(dataset.ann_dir) / dataset.img_infos[idx]["ann"]["seg_map"]
    return {
        "file": str(path),
        "pixels": int(stray.size),
        "values": [describe_label_value(int(v)) for v in np.unique(stray)[:5]],
    }
