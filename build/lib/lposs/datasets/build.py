"""Build the eight benchmark test splits (mmseg 0.30 datasets) and load one image or label from them.

Each dataset is described by ``configs/datasets/<key>.py`` (mmseg config format, loaded with
``mmcv.Config.fromfile``); its ``data_root`` is relative to the data root given to ``build_dataset``.
"""

from __future__ import annotations

from pathlib import Path

import mmcv
import numpy as np
from mmcv.utils import build_from_cfg
from mmseg.datasets import DATASETS, CustomDataset
from mmseg.datasets.pipelines import LoadAnnotations
from PIL import Image

from . import mmseg_datasets  # noqa: F401  (registers PascalVOCDataset20 and COCOObjectDataset)
from .errors import DatasetError

DATASET_KEYS = ("voc", "voc20", "context", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "datasets"
_DOCS_HINT = "see docs/datasets.md, section 'Preparing the datasets'"
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def dataset_config(key: str) -> mmcv.Config:
    """The mmseg config of dataset ``key`` (one of ``DATASET_KEYS``), from ``configs/datasets/<key>.py``."""
    if key not in DATASET_KEYS:
        raise DatasetError(f"unknown dataset key '{key}'; valid keys: {', '.join(DATASET_KEYS)}")
    return mmcv.Config.fromfile(str(CONFIG_DIR / f"{key}.py"))


def class_names(key: str, aliases: bool = True) -> list[str]:
    """Class names of dataset ``key`` in label order.

    Args:
        key: one of ``DATASET_KEYS``.
        aliases: if True, the text prompts exactly as the paper's code writes them: the background row of
            ``voc`` / ``coco_object`` is its alias string (``'sky;wall;...'``, aliases separated by ``;``) and
            the few names the paper spells differently from mmseg are renamed (``prompt_renames`` in the
            dataset config: ``dining table``, ``potted plant``, ``aeroplane``). If False, mmseg's names as they
            are (``'background'``, ``'diningtable'``; handy for printing tables).

    Returns:
        ``num_classes`` strings (21, 20, 60, 59, 81, 171, 19 or 150).
    """
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
        key: one of ``DATASET_KEYS``.
        data_root: folder holding the datasets (``VOCdevkit/``, ``coco_stuff164k/``, ... as in the README).

    Labels of ``voc20``, ``context59`` and ``ade20k`` are reduced (0 -> 255, others - 1) when loaded, so
    the returned dataset has ``reduce_zero_label=False`` and a label loader that reduces.

    Raises:
        DatasetError: unknown key, or no image found.
        FileNotFoundError: the dataset's image or label folder, or its split file, is missing.
    """
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


def _decoded_image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of the image as cv2 decodes it (EXIF rotation applied), read from the header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception as err:
        raise DatasetError(f"cannot read image {path}: {type(err).__name__}: {err}") from err
    return (width, height) if orientation in _TRANSPOSED_ORIENTATIONS else (height, width)


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
    except Exception as err:
        raise DatasetError(f"cannot read label {path}: {type(err).__name__}: {err}") from err
    if label.ndim != 2:
        raise DatasetError(f"label {path} has shape {label.shape}; expected a single-channel [H, W] map")
    if image_shape is None:
        image_shape = _decoded_image_size(_image_path(dataset, idx))
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
        ``{"file": label path, "pixels": count, "values": up to 5 distinct stray values}``, or None.
    """
    stray = label[(label != 255) & ((label < 0) | (label >= len(dataset.CLASSES)))]
    if stray.size == 0:
        return None
    path = Path(dataset.ann_dir) / dataset.img_infos[idx]["ann"]["seg_map"]
    return {"file": str(path), "pixels": int(stray.size), "values": [int(v) for v in np.unique(stray)[:5]]}
