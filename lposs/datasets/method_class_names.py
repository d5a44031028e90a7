"""The baselines' own class-name files (``cls_<dataset>.txt``), shipped in ``lposs/configs/class_files/<source>/``.

Each file is the authors' as it is: one class per line in label order, a class's names on its line split by the
method's separator (SCLIP and NACLIP ``", "``, ClearCLIP ``","``, ProxyCLIP ``"; "``), the background line of VOC and
COCO-Object a list of stuff words where the method has one. ``sclip`` is also NACLIP's source: NACLIP's repository
takes its dataset configurations from SCLIP's (its README), and its class files are not in our copy of it.

A folder of one's own (``class_files_dir=DIR`` in a config, e.g. the ``configs/`` folder of a clone of the authors'
repository) replaces the shipped folder of the source: its files are read with the source's separator.
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


def protocol_class_names(key: str, source: str = "lposs", folder: str | Path | None = None) -> list[str]:
    """The prompts of dataset ``key`` as ``source`` writes them, a class's names joined by ``;`` (this toolkit's
    alias separator; the prompt builder strips white space around each, see docs/method.md, "Own protocols").

    Args:
        key: a benchmark key, or (with ``source="lposs"`` only) a dataset file.
        source: one of ``CLASS_NAME_SOURCES``.
        folder: a folder holding ``source``'s ``cls_<dataset>.txt`` files (the config key ``class_files_dir``), read
            instead of the shipped ones; None: the shipped ``lposs/configs/class_files/<source>/``.

    Raises:
        DatasetError: an unknown source, a folder with the ``lposs`` source, a benchmark with no class file, or a
            file whose class count differs from the benchmark's.
    """
    if source == "lposs":
        if folder is not None:
            raise DatasetError(
                f"class_files_dir={str(folder)!r} needs the class_names of an author's files "
                f"({', '.join(SEPARATORS)}): with class_names=lposs this toolkit's own lists are used"
            )
        return class_names(key)
    if source not in SEPARATORS:
        raise DatasetError(f"class_names={source!r}: expected one of {', '.join(CLASS_NAME_SOURCES)}")
    path = _class_file(key, source, folder)
    classes = read_method_class_file(path, SEPARATORS[source])
    for line, names in enumerate(classes, 1):
        if any(";" in name for name in names):  # ';' separates aliases here: such a name would become two
            raise DatasetError(
                f"class file {path}, line {line}: a name holds ';', which this toolkit reads as two names"
            )
    expected = len(class_names(key))
    if len(classes) != expected:
        raise DatasetError(f"class file {path}: {len(classes)} classes, dataset {key!r} has {expected}")
    return [";".join(names) for names in classes]


def _class_file(key: str, source: str, folder: str | Path | None) -> Path:
    """The ``cls_<dataset>.txt`` of ``key`` in ``folder`` (default: the shipped files of ``source``), checked."""
    name = CLASS_FILES.get(key, f"cls_{key}.txt")
    if folder is not None:
        if not Path(folder).is_dir():
            raise DatasetError(
                f"class_files_dir={str(folder)!r}: not a folder (expected one holding {source}'s cls_*.txt)"
            )
        path = Path(folder) / name
        if not path.is_file():
            raise DatasetError(f"class_files_dir={str(folder)!r}: no {name} for dataset {key!r} (class_names={source})")
        return path
    path = CLASS_NAME_DIR / source / name
    if not path.is_file():
        have = sorted(k for k, file in CLASS_FILES.items() if (CLASS_NAME_DIR / source / file).is_file())
        raise DatasetError(
            f"class_names={source}: no class file for dataset {key!r} ({path} is missing); {source}'s files shipped "
            f"here cover {', '.join(have)}; give the authors' own with class_files_dir=DIR (e.g. their configs/ folder)"
        )
    return path
