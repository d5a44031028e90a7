"""Draw the README's pipeline diagram with PIL.

Usage::

    python tools/make_pipeline_figure.py docs/figures/pipeline.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

BOXES = [
    ("image", "resized: short side 448", (235, 235, 235)),
    ("windows", "224 x 224, stride 112", (235, 235, 235)),
    ("CLIP scores", "+ DINO features, per patch", (235, 235, 235)),
    ("kNN graph LP", "over all patches (LPOSS)", (205, 225, 250)),
    ("pixel LP", "r x r colour graph (LPOSS+)", (252, 222, 196)),
    ("labels", "argmax at full size", (235, 235, 235)),
]
BOX_W, BOX_H, GAP, MARGIN, TOP = 210, 84, 46, 24, 104
GREY, DARK = (120, 120, 120), (60, 60, 60)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="PNG file to write")
    return parser.parse_args(argv)


def box_left(i: int) -> int:
    """x of the left edge of box ``i``."""
    return MARGIN + i * (BOX_W + GAP)


def draw_arrow(draw: ImageDraw.ImageDraw, x1: int, y: int, x2: int) -> None:
    draw.line([(x1, y), (x2 - 10, y)], fill=DARK, width=3)
    draw.polygon([(x2, y), (x2 - 12, y - 7), (x2 - 12, y + 7)], fill=DARK)


def draw_shortcut(draw: ImageDraw.ImageDraw, start: int, level: int, label: str, font: ImageFont.ImageFont) -> None:
    """A line from box ``start`` over the others to the labels box: where MaskCLIP and LPOSS leave the path."""
    x1, x2 = box_left(start) + BOX_W // 2, box_left(5) + BOX_W // 2 - 30 + 30 * (start - 2)
    draw.line([(x1, TOP), (x1, level), (x2, level)], fill=GREY, width=2)
    draw.line([(x2, level), (x2, TOP - 10)], fill=GREY, width=2)
    draw.polygon([(x2, TOP - 1), (x2 - 6, TOP - 12), (x2 + 6, TOP - 12)], fill=GREY)
    draw.text(((x1 + x2) // 2, level - 10), label, fill=GREY, font=font, anchor="mm")


def main(args: argparse.Namespace) -> int:
    title, small = ImageFont.load_default(size=21), ImageFont.load_default(size=14)
    width = MARGIN * 2 + len(BOXES) * BOX_W + (len(BOXES) - 1) * GAP
    canvas = Image.new("RGB", (width, TOP + BOX_H + 40), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (name, detail, fill) in enumerate(BOXES):
        x = box_left(i)
        draw.rounded_rectangle([x, TOP, x + BOX_W, TOP + BOX_H], radius=12, fill=fill, outline=(90, 90, 90), width=2)
        draw.text((x + BOX_W // 2, TOP + 32), name, fill="black", font=title, anchor="mm")
        draw.text((x + BOX_W // 2, TOP + 60), detail, fill=DARK, font=small, anchor="mm")
        if i:
            draw_arrow(draw, box_left(i) - GAP + 4, TOP + BOX_H // 2, box_left(i) - 4)
    draw_shortcut(draw, 2, 32, "MaskCLIP: argmax of the CLIP scores, no propagation", small)
    draw_shortcut(draw, 3, 66, "LPOSS: stops after the patch LP", small)
    caption = "LPOSS+ = the full path; both LP steps: L Z = Y with L = I - alpha S, solved by conjugate gradient"
    draw.text((width // 2, TOP + BOX_H + 22), caption, fill=DARK, font=small, anchor="mm")
    canvas.save(args.output, optimize=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
