"""Which datasets of a run share one pass over their images: those whose test splits hold the same images.

``voc`` and ``voc20`` list the same VOC2012 val images, ``context`` and ``context59`` the same VOC2010 ones,
``coco_object`` and ``coco_stuff`` the same COCO val2017 ones. Nothing is assumed from the keys: the image files
each built dataset lists (after its split file), in order, and the way it loads them are compared. Datasets that
read one image folder but list other files (a user's own split file, a partial download) keep separate passes,
and the run's log says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["image_files", "plan_passes"]


def image_files(dataset) -> list[str]:
    """The image files a built dataset lists, in its order (absolute paths)."""
    folder = Path(dataset.img_dir).resolve()
    return [str(folder / info["filename"]) for info in dataset.img_infos]


def _difference(name_a: str, a: list[str], name_b: str, b: list[str]) -> str:
    """Why two image lists differ, in words: their lengths, or the first place where they differ."""
    if len(a) != len(b):
        return f"{name_a} lists {len(a)} images, {name_b} {len(b)}"
    i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return f"image {i + 1} is {Path(a[i]).name} in {name_a} but {Path(b[i]).name} in {name_b}"


def plan_passes(keys: Sequence[str], datasets: Mapping[str, object]) -> tuple[list[list[str]], list[str]]:
    """Dataset keys grouped into passes, and one log line per pair of datasets that could not share one.

    Args:
        keys: dataset keys in run order.
        datasets: key -> dataset from ``datasets.build_dataset``.

    Returns:
        ``(passes, notes)``: passes in the order of their first key, each a list of keys whose datasets list the
        same image files in the same order and load them the same way; notes name datasets that read the same
        image folder but cannot share a pass, and why.
    """
    passes: list[list[str]] = []
    signatures: list[tuple] = []
    notes = []
    for key in keys:
        dataset = datasets[key]
        signature = (image_files(dataset), repr(dataset.pipeline))
        if signature in signatures:
            passes[signatures.index(signature)].append(key)
            continue
        folder = str(Path(dataset.img_dir).resolve())
        for other, (files, _) in zip(passes, signatures):
            if str(Path(datasets[other[0]].img_dir).resolve()) == folder:
                why = _difference(other[0], files, key, signature[0]) if files != signature[0] else "loaded differently"
                notes.append(f"{other[0]} and {key} read {folder} but not the same images ({why}): separate passes")
        passes.append([key])
        signatures.append(signature)
    return passes, notes
