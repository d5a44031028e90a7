"""Label-id tables of the dataset converters in ``tools/`` and the file and command-line helpers they share.

A table is a lookup array ``lut`` of int16: ``new = lut[old]``; ``-1`` marks an id that must not occur
(the converters stop with an error naming the file instead of writing a wrong label).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from lposs.files.atomic import atomic_target

from .errors import DatasetError

INVALID = -1
IGNORE = 255

# Raw COCO-Stuff164k maps (stuffthingmaps_trainval2017) hold COCO category id - 1: things 0..90,
# stuff 91..181, 255 = unlabelled. These 11 raw ids (COCO ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
# have no category, leaving 80 things and 91 stuff classes (mmseg's coco_stuff164k.py clsID_to_trID).
COCO_UNUSED_RAW_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_NUM_RAW_IDS = 182
COCO_FIRST_STUFF_RAW_ID = 91

# Cityscapes labelIds -> trainIds (cityscapesscripts/helpers/labels.py); ids 0..33 not listed are 255.
CITYSCAPES_NUM_IDS = 34
CITYSCAPES_ID_TO_TRAIN_ID = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}

# PASCAL Context: ids (1-based, labels.txt of the 459-class release) of the 59 classes kept by the
# benchmark, from mmseg's tools/convert_datasets/pascal_context.py `_mapping` (minus its 0). Sorted, they
# are in mmseg's alphabetical class order; every other id (and 0, unlabelled) becomes 0 = background.
PASCAL_CONTEXT_59_IDS = tuple(
    sorted(
        (
            2,
            259,
            260,
            415,
            324,
            9,
            258,
            144,
            18,
            19,
            22,
            23,
            397,
            25,
            284,
            158,
            159,
            416,
            33,
            162,
            420,
            454,
            295,
            296,
            427,
            44,
            45,
            46,
            308,
            59,
            440,
            445,
            31,
            232,
            65,
            354,
            424,
            68,
            326,
            72,
            458,
            34,
            207,
            80,
            355,
            85,
            347,
            220,
            349,
            360,
            98,
            187,
            104,
            105,
            366,
            189,
            368,
            113,
            115,
        )
    )
)
PASCAL_CONTEXT_NUM_IDS = 460  # 0 (unlabelled) and the 459 class ids


def _used_coco_raw_ids() -> np.ndarray:
    """The 171 raw ids that name a COCO-Stuff class, ascending: ``[171]`` int."""
    return np.setdiff1d(np.arange(COCO_NUM_RAW_IDS), COCO_UNUSED_RAW_IDS)


def coco_stuff_lut() -> np.ndarray:
    """Raw COCO-Stuff164k id -> mmseg ``labelTrainIds`` (0..170 in raw id order, 255 kept): ``[256]`` int16."""
    lut = np.full(256, INVALID, dtype=np.int16)
    used = _used_coco_raw_ids()
    lut[used] = np.arange(len(used))
    lut[IGNORE] = IGNORE
    return lut


def coco_object_lut() -> np.ndarray:
    """Raw COCO-Stuff164k id -> COCO-Object ``instanceTrainIds``: ``[256]`` int16.

    Thing ids become 1..80 in raw id order; stuff ids become 0 = background.
    """
    lut = np.full(256, INVALID, dtype=np.int16)
    used = _used_coco_raw_ids()
    things = used[used < COCO_FIRST_STUFF_RAW_ID]
    lut[things] = np.arange(1, len(things) + 1)
    lut[used[used >= COCO_FIRST_STUFF_RAW_ID]] = 0
    # Reference quirk (GroupViT/TCL/CLIP-DINOiser converter: every id > 90 -> 0): unlabelled 255 also
    # becomes background instead of staying ignored.
    lut[IGNORE] = 0
    return lut


def cityscapes_lut() -> np.ndarray:
    """Cityscapes ``labelIds`` -> ``labelTrainIds`` (19 classes, 255 = ignore): ``[34]`` int16."""
    lut = np.full(CITYSCAPES_NUM_IDS, IGNORE, dtype=np.int16)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


def pascal_context_lut(strict: bool = False) -> np.ndarray:
    """PASCAL Context 459-class id -> 60-class ``SegmentationClassContext`` index: ``[460]`` int16.

    The 59 kept ids become 1..59 in ascending id order. Other ids become 0 = background; with ``strict``
    they are rejected instead (mmseg's detail-API converter asserts its masks hold only 0 and the 59 ids).
    """
    lut = np.full(PASCAL_CONTEXT_NUM_IDS, INVALID if strict else 0, dtype=np.int16)
    lut[0] = 0
    lut[list(PASCAL_CONTEXT_59_IDS)] = np.arange(1, len(PASCAL_CONTEXT_59_IDS) + 1)
    return lut


def remap_label(label: np.ndarray, lut: np.ndarray, source: str | Path) -> np.ndarray:
    """Apply a table to a label map.

    Args:
        label: ``[H, W]`` integer ids.
        lut: ``[N]`` int16 table from this module.
        source: the file the label came from (named in errors).

    Returns:
        ``[H, W]`` uint8 converted ids.

    Raises:
        DatasetError: the label is not ``[H, W]`` or holds an id the table does not accept.
    """
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise DatasetError(f"{source}: expected a single-channel integer label map, got {label.dtype} {label.shape}")
    values = np.unique(label).astype(np.int64)
    in_range = (values >= 0) & (values < len(lut))
    bad = values[~in_range | (lut[np.clip(values, 0, len(lut) - 1)] == INVALID)]
    if bad.size:
        valid = np.flatnonzero(lut != INVALID).tolist()
        raise DatasetError(f"{source}: unexpected label ids {bad[:20].tolist()}; expected ids in {valid}")
    return lut[label].astype(np.uint8)


def read_label_png(path: Path) -> np.ndarray:
    """Read a label PNG as stored (palette indices, not colours): ``[H, W]`` integer ids."""
    try:
        with Image.open(path) as image:
            return np.array(image)
    except Exception as err:
        raise DatasetError(f"cannot read label {path}: {type(err).__name__}: {err}") from err


def write_png_atomic(label: np.ndarray, path: Path) -> None:
    """Write a ``[H, W]`` uint8 label PNG whole or not at all (:func:`lposs.files.atomic.atomic_target`)."""
    with atomic_target(path) as tmp:
        Image.fromarray(label).save(tmp, format="PNG")


def convert_label_files(jobs: Sequence[tuple[Path, Path]], convert: Callable[[Path], np.ndarray], desc: str) -> int:
    """Run ``convert(src)`` for each ``(src, dst)`` pair and write the result to ``dst`` atomically.

    Returns:
        the number of files written.
    """
    for src, dst in tqdm(jobs, desc=desc, unit="file"):
        write_png_atomic(convert(src), dst)
    return len(jobs)


def raw_coco_label_files(ann_dir: Path) -> list[Path]:
    """The raw COCO-Stuff164k label maps in ``ann_dir`` (``<image id>.png``), sorted; converted outputs
    (``*_labelTrainIds.png``, ``*_instanceTrainIds.png``) are skipped.

    Raises:
        FileNotFoundError: ``ann_dir`` is missing or holds no raw label map.
    """
    if not ann_dir.is_dir():
        raise FileNotFoundError(
            f"COCO-Stuff164k label folder not found: {ann_dir} (unzip "
            f"stuffthingmaps_trainval2017.zip into annotations/)"
        )
    files = sorted(p for p in ann_dir.glob("*.png") if not p.stem.endswith("TrainIds"))
    if not files:
        raise FileNotFoundError(f"no raw COCO-Stuff164k label map (<image id>.png) in {ann_dir}")
    return files


def convert_coco_split(coco_root: Path, split: str, lut: np.ndarray, suffix: str, desc: str) -> Path:
    """Convert every raw map of ``coco_root/annotations/<split>`` to ``<image id><suffix>`` beside it.

    Returns:
        the annotation folder written to.
    """
    ann_dir = coco_root / "annotations" / split
    jobs = [(f, f.with_name(f.stem + suffix)) for f in raw_coco_label_files(ann_dir)]
    convert_label_files(jobs, lambda src: remap_label(read_label_png(src), lut, src), desc=f"{desc} {split}")
    return ann_dir


def converter_parser(
    doc: str, root: str, root_help: str, default_split: str, split_help: str
) -> argparse.ArgumentParser:
    """Command line of a converter taking a dataset folder (positional ``root``) and ``--splits``.

    ``doc`` is the tool's module docstring, shown verbatim by ``--help``.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(root, type=Path, help=root_help)
    parser.add_argument("--splits", nargs="+", default=[default_split], help=split_help)
    return parser


def run_converter(convert: Callable[[], object]) -> int:
    """Run ``convert()`` and return the tool's exit status.

    Returns:
        0 on success; 1 after printing ``error: <message>`` to stderr when it raises ``DatasetError`` or
        ``FileNotFoundError`` (bad or missing input, reported without a traceback).
    """
    try:
        convert()
    except (DatasetError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def parse_coco_args(doc: str, argv: list[str] | None = None) -> argparse.Namespace:
    """Arguments of the COCO-Stuff164k converters: ``coco_root`` and ``splits`` (default ``['val2017']``)."""
    return converter_parser(
        doc,
        "coco_root",
        "COCO-Stuff164k folder holding annotations/<split>/*.png",
        "val2017",
        "annotation sub-folders to convert",
    ).parse_args(argv)


def convert_coco_main(args: argparse.Namespace, lut: np.ndarray, suffix: str, desc: str) -> int:
    """``main`` of a COCO-Stuff164k converter: apply ``lut`` to every split of ``args.splits``.

    Args:
        args: from ``parse_coco_args``.
        lut: ``[256]`` int16 table (``coco_stuff_lut()`` or ``coco_object_lut()``).
        suffix: appended to the image id to name each output file (e.g. ``'_labelTrainIds.png'``).
        desc: dataset name shown on the progress bar.

    Returns:
        the exit status (see ``run_converter``).
    """

    def convert_splits() -> None:
        for split in args.splits:
            ann_dir = convert_coco_split(args.coco_root, split, lut, suffix, desc=desc)
            print(f"wrote *{suffix} files to {ann_dir}")

    return run_converter(convert_splits)
