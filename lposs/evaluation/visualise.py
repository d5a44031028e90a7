"""Drawing label maps: colour palettes, overlays, legends, side-by-side panels (numpy + PIL only).

Usage::

    colours = palette(len(names))
    panels = [("prediction", overlay(image, prediction, colours)), ("label", overlay(image, label, colours))]
    figure = side_by_side(panels)
    figure = draw_legend(figure, names, present_classes(prediction, names), colours)
    save_png(Path("out.png"), figure)

Label values that are not a class index (255 = ignore, or anything >= the number of colours) are drawn black.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .reporting import atomic_target

__all__ = [
    "IGNORE_COLOUR",
    "Colour",
    "OverlayWriter",
    "colourise",
    "draw_legend",
    "legend_font",
    "overlay",
    "overlay_figure",
    "palette",
    "present_classes",
    "save_png",
    "side_by_side",
]

Colour = tuple[int, int, int]
IGNORE_COLOUR: Colour = (0, 0, 0)
_GOLDEN = 0.618033988749895  # golden-ratio hue steps keep consecutive classes far apart on the colour wheel
_WHITE: Colour = (255, 255, 255)


def palette(num_classes: int, base: Sequence[Sequence[int]] | None = None) -> list[Colour]:
    """``num_classes`` distinct RGB colours: ``base`` (e.g. a dataset's ``PALETTE``) first, generated ones after.

    Generated colours are bright (value >= 0.7), so none is the black of ignored pixels.
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    colours = [tuple(int(c) for c in colour) for colour in (base or [])][:num_classes]
    for colour in colours:
        if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
            raise ValueError(f"palette colour {colour} is not an (r, g, b) triple of values in [0, 255]")
    i = 0
    while len(colours) < num_classes:
        hue = (i * _GOLDEN) % 1.0
        saturation = (0.9, 0.55, 0.75)[(i // 2) % 3]
        value = (0.95, 0.7)[i % 2]
        colour = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, saturation, value))
        if colour not in colours:
            colours.append(colour)
        i += 1
    return colours  # type: ignore[return-value]


def colourise(labels: np.ndarray, colours: Sequence[Colour]) -> np.ndarray:
    """Colour a label map.

    Args:
        labels: ``[H, W]`` integer class indices; values outside ``[0, len(colours))`` are drawn black.
        colours: one RGB triple per class.

    Returns:
        ``[H, W, 3]`` uint8 RGB.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be an [H, W] array, got shape {labels.shape}")
    table = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
    out = np.empty(labels.shape + (3,), dtype=np.uint8)
    out[:] = IGNORE_COLOUR
    valid = (labels >= 0) & (labels < len(table))
    out[valid] = table[labels[valid].astype(np.int64)]
    return out


def overlay(image: np.ndarray, labels: np.ndarray, colours: Sequence[Colour], alpha: float = 0.5) -> np.ndarray:
    """Blend class colours onto an image: ``round((1 - alpha) * image + alpha * colour)`` per pixel.

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        labels: ``[H, W]`` integer class indices (ignored values blend with black).
        colours: one RGB triple per class.
        alpha: weight of the class colour, in ``[0, 1]``.

    Returns:
        ``[H, W, 3]`` uint8 RGB.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an [H, W, 3] uint8 array, got shape {image.shape} dtype {image.dtype}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels shape {labels.shape} does not match image size {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colourise(labels, colours).astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def overlay_figure(
    image: np.ndarray, labels: np.ndarray, names: Sequence[str], colours: Sequence[Colour]
) -> np.ndarray:
    """``[H, W, 3]`` uint8 image + ``[H, W]`` labels -> overlay with a legend of the classes present (uint8 RGB)."""
    return draw_legend(overlay(image, labels, colours), names, present_classes(labels, names), colours)


def present_classes(labels: np.ndarray, class_names: Sequence[str]) -> list[int]:
    """Sorted class indices that occur in ``labels`` ``[H, W]`` (ignored values such as 255 left out)."""
    values = np.unique(labels)
    return [int(v) for v in values if 0 <= v < len(class_names)]


def legend_font(height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at a size readable next to an image ``height`` pixels tall (12 to 40 px)."""
    return ImageFont.load_default(size=int(np.clip(round(height / 28), 12, 40)))


def _text_size(font: Any, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return int(right - min(left, 0)), int(bottom - min(top, 0))


def draw_legend(
    image: np.ndarray, class_names: Sequence[str], present_ids: Sequence[int], colours: Sequence[Colour]
) -> np.ndarray:
    """Add a white panel to the right of ``image`` listing ``present_ids`` (colour swatch + name), in that order.

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        class_names: name of every class; only those in ``present_ids`` are drawn.
        present_ids: class indices to list (e.g. from :func:`present_classes`).
        colours: one RGB triple per class.

    Returns:
        ``[max(H, legend height), W + legend width, 3]`` uint8 RGB; ``image`` itself when ``present_ids`` is empty.
    """
    if not present_ids:
        return image
    font = legend_font(image.shape[0])
    names = [class_names[i] for i in present_ids]
    line = max(_text_size(font, name)[1] for name in names)
    swatch, pad = line + 4, max(line // 2, 6)
    row = swatch + pad // 2
    width = pad + swatch + pad + max(_text_size(font, name)[0] for name in names) + pad
    height = max(image.shape[0], pad + row * len(names) + pad)
    canvas = Image.new("RGB", (image.shape[1] + width, height), _WHITE)
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = image.shape[1] + pad
    for i, (class_id, name) in enumerate(zip(present_ids, names)):
        y = pad + i * row
        # a grey outline keeps white or very light class colours visible on the white panel
        draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=tuple(colours[class_id]), outline=(96, 96, 96))
        draw.text((x + swatch + pad, y + swatch // 2), name, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(canvas)


def side_by_side(panels: Sequence[tuple[str, np.ndarray]], gap: int = 8) -> np.ndarray:
    """Place images left to right, each under its title, on a white background.

    Args:
        panels: ``(title, image)`` pairs; images are ``[h_i, w_i, 3]`` uint8 RGB of any sizes (top-aligned).
        gap: white pixels between panels.

    Returns:
        ``[title height + max h_i, sum w_i + gaps, 3]`` uint8 RGB.
    """
    if not panels:
        raise ValueError("side_by_side needs at least one (title, image) panel")
    tallest = max(image.shape[0] for _, image in panels)
    font = legend_font(tallest)
    title_height = max(_text_size(font, title or " ")[1] for title, _ in panels) + 12
    width = sum(image.shape[1] for _, image in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, title_height + tallest), _WHITE)
    draw = ImageDraw.Draw(canvas)
    x = 0
    for title, image in panels:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"panel {title!r} must be an [H, W, 3] image, got shape {image.shape}")
        canvas.paste(Image.fromarray(image.astype(np.uint8)), (x, title_height))
        draw.text((x + image.shape[1] // 2, title_height // 2), title, fill=(0, 0, 0), font=font, anchor="mm")
        x += image.shape[1] + gap
    return np.asarray(canvas)


def save_png(path: Path, image: np.ndarray, colours: Sequence[Colour] | None = None) -> None:
    """Write a PNG atomically (temporary file in the same folder, then ``os.replace``).

    Args:
        path: destination; its folder is created.
        image: ``[H, W, 3]`` uint8 RGB, or with ``colours`` an ``[H, W]`` label map with values in ``[0, 256)``,
            written as a palette PNG whose pixel values are the class indices.
        colours: palette for a label map (at most 256 colours).
    """
    if colours is None:
        picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="RGB")
    else:
        if image.size and (image.min() < 0 or image.max() > 255 or len(colours) > 256):
            raise ValueError(
                f"a palette PNG holds class indices 0..255; got values {image.min()}..{image.max()} "
                f"and {len(colours)} colours"
            )
        picture = Image.fromarray(image.astype(np.uint8), mode="P")
        picture.putpalette([channel for colour in colours for channel in colour])
    with atomic_target(path) as tmp:
        picture.save(tmp, format="PNG")


class OverlayWriter:
    """Writes ``folder/<image path>.png`` (sub-folders kept, as the predictions): prediction and label overlays side
    by side, plus a legend.

    Called as ``writer(index, image, prediction, label)`` by ``evaluation.loop.evaluate``; only the
    first ``limit`` calls write a file. Colours come from ``dataset.PALETTE`` when it has one.
    """

    def __init__(self, folder: Path, class_names: Sequence[str], dataset: Any, limit: int) -> None:
        self.folder = Path(folder)
        self.class_names = list(class_names)
        self.dataset = dataset
        self.limit = limit
        self.calls = 0
        self.colours = palette(len(self.class_names), getattr(dataset, "PALETTE", None))

    def __call__(self, index: int, image: np.ndarray, prediction: np.ndarray, label: np.ndarray) -> Path | None:
        """Write the figure of dataset image ``index`` (``[H, W, 3]`` uint8, ``[H, W]`` maps); its path, or None."""
        if self.calls >= self.limit:
            return None
        self.calls += 1
        names, colours = self.class_names, self.colours
        panels = [("prediction", overlay(image, prediction, colours)), ("label", overlay(image, label, colours))]
        present = sorted(set(present_classes(prediction, names)) | set(present_classes(label, names)))
        figure = draw_legend(side_by_side(panels), names, present, colours)
        path = self.folder / Path(self.dataset.img_infos[index]["filename"]).with_suffix(".png")
        save_png(path, figure)
        return path
