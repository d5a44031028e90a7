"""Labels of datasets described by a file: read as stored, checked, and turned into class indices.

Every label comes out as ``[H, W]`` int64: class indices ``0..C-1``, 255 where the label is ignored, and any
other value for pixels outside the classes (counted and reported as stray labels, like mmsegmentation does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .custom import Colour, DatasetFile
from .errors import DatasetError

__all__ = [
    "IGNORE",
    "colours_to_values",
    "describe_label_value",
    "file_palette",
    "label_mode_problem",
    "palette_problem",
    "read_label",
    "to_classes",
]

IGNORE = 255  # the ignored label of the whole evaluation (metrics, stray labels)
_INDEX_MODES = ("1", "L", "P", "I", "F")  # one value per pixel (plus the 16-bit modes I;16*)
_RGB_MODES = ("RGB", "RGBA", "RGBX")
# Colours of RGB labels that no palette entry has become values at or below -2^40, far from any value a label file
# can hold (32-bit integers), so that a negative value read from a file is never described as a colour.
_COLOUR_OFFSET = 1 << 40


def label_mode_problem(mode: str, path: Path, has_palette: bool) -> str | None:
    """Why a label of PIL image mode ``mode`` cannot be read as class indices (one line), or None."""
    if mode in _INDEX_MODES or mode.startswith("I;16"):
        return None
    if mode in _RGB_MODES:
        if has_palette:
            return None
        return (
            f"label {path} is an RGB image; expected one class index per pixel (a greyscale or palette PNG), "
            "or a palette in the dataset file that maps its colours to label values"
        )
    return f"label {path} has image mode {mode}; expected one class index per pixel (a greyscale or palette PNG)"


def file_palette(image: Image.Image) -> dict[int, Colour]:
    """Index -> colour of a palette (mode ``P``) image, from its header (a PNG's PLTE chunk: no pixel decoded)."""
    raw = image.palette
    if image.mode != "P" or raw is None:
        return {}
    if raw.mode == "RGB" and raw.rawmode in (None, "RGB"):
        data = bytes(raw.palette)
    else:  # another stored layout (BGR, 15-bit, ...): PIL converts it, decoding the image
        data = bytes(image.getpalette("RGB") or [])
    return {i: (data[3 * i], data[3 * i + 1], data[3 * i + 2]) for i in range(len(data) // 3)}


def palette_problem(image: Image.Image, path: Path, palette: dict[int, Colour] | None) -> str | None:
    """Why a palette PNG's own colours disagree with the dataset file's ``palette`` (one line), or None.

    A palette image's stored indices are its label values (as mmsegmentation reads it); the ``palette`` key must
    then give each value it lists the colour the file gives that index, else classes would silently be remapped.
    """
    if not palette:
        return None
    theirs = file_palette(image)
    for value, colour in sorted(palette.items()):
        if value in theirs and theirs[value] != colour:
            return (
                f"label {path} is a palette image whose index {value} has colour {list(theirs[value])}, but the "
                f"dataset file's palette gives label value {value} the colour {list(colour)}; a palette image's "
                "indices are its label values: make the palette key match the file's colours, or remove it"
            )
    return None


def _codes(rgb: np.ndarray) -> np.ndarray:
    """``[..., 3]`` uint8 colours -> ``[...]`` int64 ``r << 16 | g << 8 | b``."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]


def colours_to_values(rgb: np.ndarray, palette: dict[int, Colour]) -> np.ndarray:
    """RGB label -> label values: each pixel whose colour is exactly a palette colour gets that colour's value.

    As mmsegmentation's converters of colour labels (iSAID: ``np.all(label == colour, axis=2)`` per colour), except
    that a colour of no palette entry is not made class 0: it becomes ``-(2^40 + code)``
    (``code = r << 16 | g << 8 | b``), a stray label that :func:`describe_label_value` names by its colour.

    Args:
        rgb: ``[H, W, 3]`` uint8.
        palette: label value -> ``(r, g, b)``.

    Returns:
        ``[H, W]`` int64.
    """
    codes = _codes(rgb)
    known = np.array(sorted(palette), dtype=np.int64)  # label values, in the order of their colour codes below
    known_codes = _codes(np.array([palette[v] for v in known], dtype=np.uint8))
    order = np.argsort(known_codes)
    known, known_codes = known[order], known_codes[order]
    position = np.clip(np.searchsorted(known_codes, codes), 0, len(known_codes) - 1)
    return np.where(known_codes[position] == codes, known[position], -(codes + _COLOUR_OFFSET))


def describe_label_value(value: int) -> str:
    """A label value in messages: the number (negative ones too), or the colour of an RGB label's colour outside
    the palette."""
    if value > -_COLOUR_OFFSET:
        return str(value)
    code = -value - _COLOUR_OFFSET
    return f"colour ({code >> 16}, {(code >> 8) & 255}, {code & 255})"


def to_classes(values: np.ndarray, ignore_index: int, reduce_zero_label: bool) -> np.ndarray:
    """Label values -> class indices, 255 = ignored: ``[H, W]`` int64 in, ``[H, W]`` int64 out.

    ``ignore_index`` pixels are ignored; with ``reduce_zero_label`` label 0 is ignored too and label ``v > 0`` is
    class ``v - 1`` (mmsegmentation's ``reduce_zero_label``, which also keeps 255 ignored with the default
    ``ignore_index``). A class index of 255 that is not ignored (only possible with another ``ignore_index``)
    becomes 256, so that it counts as a stray label instead of reading as ignored.
    """
    ignored = values == ignore_index
    if reduce_zero_label:
        ignored |= values == 0
        values = np.where(values > 0, values - 1, values)
    values = np.where(values == IGNORE, IGNORE + 1, values)
    return np.where(ignored, IGNORE, values)


def read_label(path: Path, spec: DatasetFile) -> np.ndarray:
    """Read one label file of the dataset ``spec`` as class indices.

    Single-channel files (greyscale, palette PNGs read as their stored indices, 16-bit, integer TIFFs) hold label
    values; RGB files are converted through ``spec.palette``.

    Returns:
        ``[H, W]`` int64: class indices, 255 = ignored, other values are stray labels (see :func:`to_classes`).

    Raises:
        DatasetError: one line naming the file: unreadable, RGB without a palette, a palette image whose colours
            disagree with the dataset file's palette, not one value per pixel, or holding non-integer values.
    """
    try:
        with Image.open(path) as image:
            problem = label_mode_problem(image.mode, path, spec.palette is not None)
            problem = problem or palette_problem(image, path, spec.palette)
            if problem is not None:
                raise DatasetError(problem)
            values = np.array(image)
    except (OSError, ValueError, SyntaxError) as error:
        if isinstance(error, DatasetError):
            raise
        raise DatasetError(f"cannot read label {path}: {type(error).__name__}: {error}") from error
    if values.ndim == 3:
        values = colours_to_values(values[..., :3], spec.palette)
    elif values.dtype.kind == "f":
        bad = values[~np.isfinite(values) | (values != np.floor(values))]
        if bad.size:
            raise DatasetError(
                f"label {path} holds non-integer values (e.g. {bad[0]:g}); expected class indices (whole numbers)"
            )
        huge = values[np.abs(values) >= 2**31]
        if huge.size:  # beyond any integer label file (and the colour codes of RGB labels)
            raise DatasetError(f"label {path} holds {huge[0]:g}; expected class indices (32-bit whole numbers)")
    return to_classes(values.astype(np.int64), spec.ignore_index, spec.reduce_zero_label)
