"""Draw the README's pipeline diagram with PIL.

Usage::

    python tools/make_pipeline_figure.py docs/figures/pipeline.png
"""

import sys

from PIL import Image, ImageDraw, ImageFont

BOXES = [
    ("image", "resized: short side 448", (235, 235, 235)),
    ("windows", "224 x 224, stride 112", (235, 235, 235)),
    ("CLIP scores", "+ DINO features, per patch", (235, 235, 235)),
    ("kNN graph LP", "over all patches (LPOSS)", (205, 225, 250)),
    ("pixel LP", "r x r colour graph (LPOSS+)", (252, 222, 196)),
    ("labels", "argmax at full size", (235, 235, 235)),
]
W, H, GAP, MARGIN, TOP = 210, 84, 46, 24, 104
title = ImageFont.load_default(size=21)
small = ImageFont.load_default(size=14)
width = MARGIN * 2 + len(BOXES) * W + (len(BOXES) - 1) * GAP
canvas = Image.new("RGB", (width, TOP + H + 40), "white")
draw = ImageDraw.Draw(canvas)


def left(i):
    return MARGIN + i * (W + GAP)


def arrow(x1, y, x2, colour=(60, 60, 60)):
    draw.line([(x1, y), (x2 - 10, y)], fill=colour, width=3)
    draw.polygon([(x2, y), (x2 - 12, y - 7), (x2 - 12, y + 7)], fill=colour)


for i, (name, detail, fill) in enumerate(BOXES):
    x = left(i)
    draw.rounded_rectangle([x, TOP, x + W, TOP + H], radius=12, fill=fill, outline=(90, 90, 90), width=2)
    draw.text((x + W // 2, TOP + 32), name, fill="black", font=title, anchor="mm")
    draw.text((x + W // 2, TOP + 60), detail, fill=(60, 60, 60), font=small, anchor="mm")
    if i:
        arrow(left(i) - GAP + 4, TOP + H // 2, left(i) - 4)

# shortcuts above the boxes: where MaskCLIP and LPOSS leave the pipeline
for start, level, label in [
    (2, 32, "MaskCLIP: argmax of the CLIP scores, no propagation"),
    (3, 66, "LPOSS: stops after the patch LP"),
]:
    x1, x2, y = left(start) + W // 2, left(5) + W // 2 - 30 + 30 * (start - 2), level
    colour = (120, 120, 120)
    draw.line([(x1, TOP), (x1, y), (x2, y)], fill=colour, width=2)
    draw.line([(x2, y), (x2, TOP - 10)], fill=colour, width=2)
    draw.polygon([(x2, TOP - 1), (x2 - 6, TOP - 12), (x2 + 6, TOP - 12)], fill=colour)
    draw.text(((x1 + x2) // 2, y - 10), label, fill=colour, font=small, anchor="mm")
draw.text(
    (width // 2, TOP + H + 22),
    "LPOSS+ = the full path; both LP steps: L Z = Y with L = I - alpha S, solved by conjugate gradient",
    fill=(60, 60, 60),
    font=small,
    anchor="mm",
)
canvas.save(sys.argv[1], optimize=True)
