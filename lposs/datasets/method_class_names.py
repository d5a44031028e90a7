"""The baselines' own class-name files (``cls_<dataset>.txt``), shipped in ``lposs/configs/class_files/<source>/``.

Each file is the authors' as it is: one class per line in label order, a class's names on its line split by the
method's separator (SCLIP and NACLIP ``", "``, ClearCLIP ``","``, ProxyCLIP ``"; "``), the background line of VOC and
COCO-Object a list of stuff words where the method has one. ``sclip`` is also NACLIP's source: NACLIP's repository
takes its dataset configurations from SCLIP's (its README), and its class files are not in our copy of it.
"""

from __future__ import annotations

from pathlib import Path

from .build import class_names
from .errors import DatasetError

__all__ = ["CLASS_FILES", "CLASS_NAME_DIR", "CLASS_NAME_SOURCES", "protocol_class_names", "read_method_class_file"]

CLASS_NAME_DIR = Path(__file__).resolve().parents[1] / "configs" / "class_files"
CLASS_NAME_SOURCES = (
    "lposs",
    "sclip",
    "clearclip",
    "proxyclip",
)  # `lposs`: this toolkit's lists (datasets.class_names)
# the authors' file name of each benchmark key
CLASS_FILES = {
    "voc": "cls_voc21.txt",
    "voc20": "cls_voc20.txt",
    "context": "cls_context60.txt",
    "context59": "cls_context59.txt",
    "coco_object": "cls_coco_object.txt",
    "coco_stuff": "cls_coco_stuff.txt",
    "cityscapes": "cls_city_scapes.txt",
    "ade20k": "cls_ade20k.txt",
}
# how each source's get_cls_idx splits a line into names
SEPARATORS = {"sclip": ", ", "clearclip": ",", "proxyclip": "; "}


def read_method_class_file(path: Path, separator: str) -> list[list[str]]:
    """The names of each class of a ``cls_<dataset>.txt`` file, as the authors' ``get_cls_idx`` reads them.

    Lines as ``readlines`` gives them, each split by ``separator``, the newline removed from every name (other
    white space is kept, as there).

    Returns:
        One list of names per line (class), in label order.
    """
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    return [[name.replace("\n", "") for name in line.split(separator)] for line in lines]


def protocol_class_names(key: str, source: str = "lposs") -> list[str]:
    """The prompts of dataset ``key`` as ``source`` writes them, a class's names joined by ``;`` (this toolkit's
    alias separator; the prompt builder strips white space around each, see docs/method.md, "Own protocols").

    Args:
        key: a benchmark key, or (with ``source="lposs"`` only) a dataset file.
        source: one of ``CLASS_NAME_SOURCES``.

    Raises:
        DatasetError: an unknown source, a benchmark the source has no file for, or a file whose class count
            differs from the benchmark's.
    """
    if source == "lposs":
        return class_names(key)
    if source not in SEPARATORS:
        raise DatasetError(f"class_names={source!r}: expected one of {', '.join(CLASS_NAME_SOURCES)}")
    path = CLASS_NAME_DIR / source / CLASS_FILES.get(key, f"cls_{key}.txt")
    if not path.is_file():
        have = sorted(k for k, name in CLASS_FILES.items() if (CLASS_NAME_DIR / source / name).is_file())
        raise DatasetError(
            f"class_names={source}: no class file for dataset {key!r} ({path} is missing); {source}'s files cover "
            f"{', '.join(have)}"
        )
    classes = read_method_class_file(path, SEPARATORS[source])
    expected = len(class_names(key))
    if len(classes) != expected:
        raise DatasetError(f"class file {path}: {len(classes)} classes, dataset {key!r} has {expected}")
    return [";".join(names) for names in classes]
