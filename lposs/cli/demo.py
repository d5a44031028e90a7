"""Segment your own images with LPOSS+ (default), LPOSS or the MaskCLIP baseline, given a list of class names.

Usage::

    python tools/demo.py photo.jpg --classes "cat,dog,grass,sky;cloud" --output out/
    python tools/demo.py a.jpg b.png --classes "person,bicycle,road,tree" --method lposs --output out/
    python tools/demo.py photos/ --classes "person,dog,grass,sky" --output out/   # every image in the folder
    python tools/demo.py photo.jpg --classes "cat,grass,sky" --output out/ --compare
    python tools/demo.py photo.jpg --classes "cat,grass" --output out/ device=cpu model.templates=single

Classes are separated by ``,``; ``;`` separates aliases of one class (``"sky;cloud"``: a pixel is that class when
it matches either word; the legend shows the first). ``key=value`` overrides are those of ``main_eval.py``.
Per image ``<stem>`` it writes to ``--output``:

- ``<stem>_labels.png``: palette PNG at the image's size; pixel value = class index in ``--classes`` order;
- ``<stem>_overlay.png``: class colours over the image, with a legend of the classes found;
- ``<stem>_compare.png`` (``--compare``): MaskCLIP | LPOSS | LPOSS+ overlays (backbones run once per image); with
  another CLIP head (``model.clip.head=naclip``) the first panel is that head's baseline (NACLIP).

A folder stands for the image files directly in it (by extension: .jpg, .png, .webp, .tif, ...), sorted by name.
Every input is checked before a model loads: missing files, folders without images and files that are not images
are all reported on stderr, one line each, and nothing runs (exit code 2); so do a bad class list or config value.
An image that passes this check but fails to decode later is reported and skipped (exit code 1).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from lposs.datasets import DatasetError
from lposs.datasets.class_lists import display_names, parse_class_argument
from lposs.datasets.image_files import ImageReadError, image_suffixes, load_image, to_rgb_array
from lposs.evaluation.config import load_config
from lposs.evaluation.device import apply_precision, pick_device
from lposs.evaluation.visualise import (
    Colour,
    draw_legend,
    overlay,
    overlay_figure,
    palette,
    present_classes,
    save_png,
    side_by_side,
)
from lposs.segmentation import Segmentor, SegmentorSettings

METHODS = ("maskclip", "lposs", "lposs_plus")
TITLES = {"maskclip": "MaskCLIP", "lposs": "LPOSS", "lposs_plus": "LPOSS+"}
HEAD_TITLES = {
    "maskclip": "MaskCLIP",
    "sclip": "SCLIP",
    "clearclip": "ClearCLIP",
    "naclip": "NACLIP",
    "proxyclip": "ProxyCLIP",
}
COMPARE_SIDE = 1024  # long side of each --compare panel, so that large photos give a viewable figure
__all__ = [  # the image helpers live in lposs.datasets.image_files; named here for the app and lposs.api
    "ClassListError",
    "ImageReadError",
    "ImageSegmenter",
    "collect_images",
    "display_names",
    "load_image",
    "main",
    "overlay_figure",
    "parse_args",
    "parse_classes",
    "pick_device",
    "segment_files",
    "to_rgb_array",
]


class ClassListError(ValueError):
    """A ``--classes`` string that cannot be used."""


class InputFilesError(ValueError):
    """Inputs that cannot be used (missing, unreadable, a folder without images): one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE | FOLDER | key=value",
        help="image files (JPEG, PNG, ...) or folders of them, then any key=value config overrides, e.g. device=cpu",
    )
    parser.add_argument("--classes", required=True, help="comma-separated class names; ';' separates aliases")
    parser.add_argument(
        "--method", choices=METHODS, default="lposs_plus", help="configs/<method>.yaml (default lposs_plus)"
    )
    parser.add_argument("--output", type=Path, required=True, help="folder for the PNGs (created)")
    parser.add_argument("--compare", action="store_true", help="also write MaskCLIP | LPOSS | LPOSS+ side by side")
    args = parser.parse_intermixed_args(argv)
    # images and overrides share the positional slots: an item with '=' that is not an existing file is an override
    args.overrides = [item for item in args.inputs if "=" in item and not Path(item).exists()]
    args.images = [Path(item) for item in args.inputs if item not in args.overrides]
    if not args.images:
        parser.error("no IMAGE or FOLDER given")
    return args


def parse_classes(text: str) -> list[str]:
    """``"cat,dog,sky;cloud"`` (or the path of a class file, one class per line) -> ``["cat", "dog", "sky;cloud"]``,
    spaces around names removed.

    Raises:
        ClassListError: no class, an empty class or alias name, or a name used twice (case-insensitive).
    """
    try:
        return parse_class_argument(text)
    except (DatasetError, FileNotFoundError) as error:
        raise ClassListError(str(error)) from None


def _unreadable(path: Path) -> str | None:
    """Why ``path`` is not an image Pillow can open (header and integrity check, no full decode); None if fine."""
    try:
        with Image.open(path) as picture:
            picture.verify()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"{path}: not a readable image ({type(error).__name__}: {error})"
    return None


def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """The image files of ``inputs``: files as given, a folder's images sorted by name; each file once.

    Raises:
        InputFilesError: every missing input, folder without images and file that is not an image, one line each.
    """
    suffixes, images, problems = image_suffixes(), [], []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                problems.append(f"{item}: folder holds no image files ({', '.join(sorted(suffixes))})")
            images += found
        elif item.is_file():
            images.append(item)
        else:
            problems.append(f"{item}: no such file or folder")
    images = list(dict.fromkeys(images, None))  # a file named twice (or also through its folder) runs once
    problems += [problem for problem in map(_unreadable, images) if problem is not None]
    if problems:
        raise InputFilesError(problems)
    return images


def method_titles(head: str = "maskclip") -> dict[str, str]:
    """Display name of each method when CLIP runs `head`: the baseline is the head's own ('NACLIP'), and LPOSS
    built on another head than MaskCLIP says which ('LPOSS+ (NACLIP)')."""
    if head == "maskclip":
        return dict(TITLES)
    name = HEAD_TITLES[head]
    return {"maskclip": name, "lposs": f"LPOSS ({name})", "lposs_plus": f"LPOSS+ ({name})"}


def method_settings(settings: SegmentorSettings, method: str) -> SegmentorSettings:
    """``settings`` with the two switches of ``method`` (maskclip, lposs, lposs_plus); all else unchanged."""
    switches = {"maskclip": (False, False), "lposs": (True, False), "lposs_plus": (True, True)}
    propagate, refine = switches[method]
    return replace(settings, patch_propagation=propagate, pixel_refine=refine)


class _SharedWindows:
    """Backbones proxy that remembers the outputs of the windows it has seen, so that the three segmentors of
    ``--compare`` run the backbones once per image. ``clear()`` between images."""

    def __init__(self, backbones) -> None:
        self.backbones = backbones
        self._seen: list[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = []

    @property
    def alias_to_class(self) -> torch.Tensor:
        return self.backbones.alias_to_class

    @property
    def device(self) -> torch.device:
        return self.backbones.device

    @property
    def patch_size(self) -> int:
        return getattr(self.backbones, "patch_size", 16)

    @property
    def patch_sizes(self) -> tuple[int, ...]:
        return tuple(getattr(self.backbones, "patch_sizes", ()))

    def __call__(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for seen, outputs in self._seen:
            if seen.shape == windows.shape and torch.equal(seen, windows):
                return outputs
        outputs = self.backbones(windows)
        self._seen.append((windows, outputs))
        return outputs

    def clear(self) -> None:
        self._seen.clear()


class ImageSegmenter:
    """Label maps of one image for the chosen method (and, with ``compare``, all three) from ready backbones."""

    def __init__(self, backbones, settings: SegmentorSettings, classes: Sequence[str], compare: bool = False) -> None:
        backbones.set_classes(list(classes))
        self.method = settings.method
        self.titles = method_titles(getattr(backbones, "clip_head", "maskclip"))
        self._shared = _SharedWindows(backbones)
        methods = METHODS if compare else (self.method,)
        self.segmentors = {m: Segmentor(self._shared, method_settings(settings, m)) for m in methods}

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """``[H, W, 3]`` uint8 RGB -> ``{method: [H, W] int64 class indices}``."""
        try:
            return {method: segmentor.predict(image) for method, segmentor in self.segmentors.items()}
        finally:
            self._shared.clear()


def _fit(image: np.ndarray, long_side: int) -> np.ndarray:
    scale = long_side / max(image.shape[:2])
    if scale >= 1:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def write_outputs(
    image: np.ndarray,
    labels: dict[str, np.ndarray],
    method: str,
    stem: str,
    output: Path,
    classes: Sequence[str],
    colours: Sequence[Colour],
    titles: Mapping[str, str] = TITLES,
) -> list[Path]:
    """Write ``<stem>_labels.png``, ``<stem>_overlay.png`` and, when ``labels`` has all methods, ``<stem>_compare.png``.

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        labels: ``{method: [H, W] class indices}``; must contain ``method``.
        titles: the panel title of each method (see `method_titles`).
    """
    names = display_names(classes)
    paths = [output / f"{stem}_labels.png", output / f"{stem}_overlay.png"]
    save_png(paths[0], labels[method], colours)
    save_png(paths[1], overlay_figure(image, labels[method], names, colours))
    if all(m in labels for m in METHODS):
        panels = [(titles[m], _fit(overlay(image, labels[m], colours), COMPARE_SIDE)) for m in METHODS]
        present = sorted(set().union(*(present_classes(labels[m], names) for m in METHODS)))
        paths.append(output / f"{stem}_compare.png")
        save_png(paths[2], draw_legend(side_by_side(panels), names, present, colours))
    return paths


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output name of each image: its stem, with ``-2``, ``-3``... added when two inputs share a stem."""
    stems, used = [], set()
    for path in paths:
        stem, n = path.stem, 1
        while stem in used:
            n += 1
            stem = f"{path.stem}-{n}"
        used.add(stem)
        stems.append(stem)
    return stems


def segment_files(
    paths: Sequence[Path],
    segment: Callable[[np.ndarray], dict[str, np.ndarray]],
    method: str,
    output: Path,
    classes: Sequence[str],
    titles: Mapping[str, str] = TITLES,
) -> list[Path]:
    """Segment and write every image; a bad file is reported on stderr and skipped. Returns the failed paths."""
    colours = palette(len(classes))
    failed = []
    for path, stem in zip(tqdm(paths, desc=titles[method], unit="image"), unique_stems(paths)):
        try:
            image = load_image(path)
        except (OSError, ImageReadError) as error:
            tqdm.write(f"error: {error}", file=sys.stderr)
            failed.append(path)
            continue
        write_outputs(image, segment(image), method, stem, output, classes, colours, titles)
    return failed


def check_inputs(args: argparse.Namespace) -> tuple[list[str], Any, torch.device, list[Path]]:
    """Everything that can be checked before a model loads: classes, config, model config, input files.

    Returns:
        (classes, config, device, image files).

    Raises:
        ValueError: ClassListError, ConfigError, ModelConfigError or InputFilesError, with a one-line message
            (InputFilesError: one line per input).
    """
    classes = parse_classes(args.classes)
    config = load_config(f"{args.method}.yaml", args.overrides)
    device = pick_device(config.device)
    apply_precision(config.strict_float32)
    from lposs.models import check_model_config  # heavy imports once the command line is known good

    # names, tags, files, dtype, the windows a multiple of both patch sizes: before any weights load
    check_model_config(config.model, device, crop=config.crop)
    return classes, config, device, collect_images(args.images)


def main(args: argparse.Namespace) -> int:
    # torch's notices about its sparse CSR tensors (used by the propagation) say nothing about the user's run
    warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")
    try:
        classes, config, device, images = check_inputs(args)
    except ValueError as error:  # bad classes, config, model config or input files
        problems = error.problems if isinstance(error, InputFilesError) else [str(error)]
        print("\n".join(f"error: {problem}" for problem in problems), file=sys.stderr)
        return 2
    from lposs.models import LPOSSBackbones, WeightsUnavailableError

    try:
        torch.manual_seed(config.seed)  # random-init backbones (pretrained=null) are then reproducible
        backbones = LPOSSBackbones.from_config(config.model, device).eval()
        segment = ImageSegmenter(backbones, SegmentorSettings.from_config(config), classes, compare=args.compare)
    except (WeightsUnavailableError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        failed = segment_files(images, segment, segment.method, args.output, classes, segment.titles)
    except ImportError as error:  # an optional package the config asks for (knn_backend=faiss)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the output folder cannot be written (input files are handled one by one)
        print(f"error: cannot write the outputs to {args.output}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if failed:
        print(f"{len(failed)} of {len(images)} images failed: {', '.join(map(str, failed))}", file=sys.stderr)
        return 1
    return 0


def cli() -> int:
    """The console script ``lposs-demo``."""
    return main(parse_args())


if __name__ == "__main__":
    sys.exit(cli())
