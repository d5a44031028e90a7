"""Image files as users have them: which files of a folder are images, reading any of them as RGB, header sizes.

Shared by the demo, ``lposs.load`` and the unlabelled-folder mode of ``main_eval.py`` (Pillow only, no mmcv), and
by the checks of datasets described in a file (:mod:`lposs.datasets.custom`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from lposs.files.walk import walk_once

from .errors import DatasetError

__all__ = [
    "COMMON_IMAGE_SUFFIXES",
    "ImageReadError",
    "decoded_image_size",
    "image_suffixes",
    "list_image_files",
    "load_image",
    "to_rgb_array",
]

# Extensions a folder is searched for (kept to those this Pillow can open, see `image_suffixes`).
COMMON_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".dib", ".gif", ".tif", ".tiff")
COMMON_IMAGE_SUFFIXES += (".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".jp2", ".j2k", ".avif", ".qoi")
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class ImageReadError(ValueError):
    """An image file that exists but cannot be decoded."""


def _to_uint8(values: np.ndarray, limits: Sequence[float] = (255.0, 65535.0)) -> np.ndarray:
    """Pixels of more than 8 bits -> uint8, scaled by the first of ``limits`` that holds them all (else their max)."""
    values = values.astype(np.float64)
    top = float(values.max(initial=0.0))
    scale = next((limit for limit in limits if top <= limit), top) or 1.0
    return np.clip(np.rint(values * (255.0 / scale)), 0, 255).astype(np.uint8)


def to_rgb_array(picture: Image.Image) -> np.ndarray:
    """Any PIL image -> ``[H, W, 3]`` uint8 RGB: EXIF rotation applied, transparency composited on white,
    16-bit greyscale divided by 257, 32-bit / float greyscale scaled by their range, palette and CMYK converted."""
    picture = ImageOps.exif_transpose(picture)
    if picture.mode.startswith(("I", "F")):
        # I;16*: 16-bit files, full range; I (int32) and F (float) say nothing of the range, so guess it
        limits = {"I": (255.0, 65535.0), "F": (1.0, 255.0, 65535.0)}.get(picture.mode, (65535.0,))
        grey = _to_uint8(np.asarray(picture), limits)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if picture.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(picture.convert("RGB")))


def load_image(path: Path) -> np.ndarray:
    """Read an image file as ``[H, W, 3]`` uint8 RGB (see :func:`to_rgb_array`).

    Raises:
        FileNotFoundError: no such file.
        ImageReadError: the file is not a readable image (a truncated JPEG included).
    """
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as picture:
            picture.load()
            return to_rgb_array(picture)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"cannot read image {path}: {type(error).__name__}: {error}") from error


def image_suffixes() -> set[str]:
    """File extensions (lower case, with the dot) of images that a folder input contributes."""
    Image.init()
    openable = {suffix for suffix, kind in Image.registered_extensions().items() if kind in Image.OPEN}
    return {suffix for suffix in COMMON_IMAGE_SUFFIXES if suffix in openable}


def list_image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder``, recursively, as paths relative to it, sorted by their POSIX form.

    Images are recognised by extension (:func:`image_suffixes`, any case). Hidden files and folders (names
    starting with ``.``, such as macOS ``._photo.jpg`` resource forks) are skipped; links are followed.
    The order depends on the names alone, so every process and every later run lists the same sequence.
    """
    suffixes, found = image_suffixes(), []
    for root, folders, files in walk_once(folder):  # links followed, each real folder once (no loop)
        folders[:] = [name for name in folders if not name.startswith(".")]
        here = Path(root).relative_to(folder)
        found += [here / name for name in files if not name.startswith(".") and Path(name).suffix.lower() in suffixes]
    return sorted(found, key=lambda path: path.as_posix())


def decoded_image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of the image as it is decoded (EXIF rotation applied), read from the header only.

    Raises:
        DatasetError: the file cannot be opened as an image.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception as err:
        raise DatasetError(f"cannot read image {path}: {type(err).__name__}: {err}") from err
    return (width, height) if orientation in _TRANSPOSED_ORIENTATIONS else (height, width)
