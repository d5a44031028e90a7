"""The sliding-window LPOSS / LPOSS+ segmentor: steps 2-3, 7-12 (docs/method.md) around the backbones.

Usage::

    from lposs.models import LPOSSBackbones
    from lposs.segmentation import Segmentor, SegmentorSettings

    backbones = LPOSSBackbones.from_config(cfg.model, device)
    backbones.set_classes(["sky;cloud", "tree", "person"])
    segmentor = Segmentor(backbones, SegmentorSettings(pixel_refine=True))  # LPOSS+
    labels = segmentor.predict(image)  # image: [H, W, 3] uint8 RGB -> [H, W] int64 class ids
    refined = segmentor.refine(image, other_scores)  # another method's [C, h, w] scores through LPOSS+
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .class_scores import labels_with_background, max_over_aliases, probability_scores
from .external_scores import check_boxes, scores_per_window
from .image_graphs import ImageGraphs
from .label_propagation import solve_patches
from .windows import PATCH_SIZE, floor_to_multiple, merge_windows, resize_to_fit, resized_size, window_boxes

__all__ = [
    "ENCODING_FIELDS",
    "Backbones",
    "ClassColumns",
    "ImageEncoding",
    "Segmentor",
    "SegmentorSettings",
    "max_over_aliases",
]


class Backbones(Protocol):
    """What the segmentor needs from the models: see ``models.LPOSSBackbones``.

    Optional: ``patch_size`` (DINO's, default 16: the graph's patch centres), ``patch_sizes`` (CLIP's and DINO's: the
    window side must be a multiple of both) and ``features(windows)`` (DINO features alone, for :meth:`Segmentor.refine`).
    """

    alias_to_class: torch.Tensor  # [A] int64, class index of every text row

    @property
    def device(self) -> torch.device: ...

    def __call__(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``windows [B, 3, h, w]`` in [0, 1] -> (features ``[B, D, gh, gw]`` L2-normalised, scores ``[B, A, gh, gw]``)."""
        ...


@dataclass(frozen=True)
class SegmentorSettings:
    """Every setting of the method, with the paper's defaults (docs/method.md, Pipeline)."""

    patch_propagation: bool = True  # False: the MaskCLIP baseline (argmax of the initial scores)
    pixel_refine: bool = False  # True: LPOSS+
    short_side: int = 448
    long_side: int = 2048
    crop: int = 224  # 0: the whole image in one window (NACLIP's slide_crop=0), stride unused
    stride: int = 112
    window_batch: int = 64
    k: int = 400
    gamma: float = 3.0
    sigma: float = 0.01
    pix_dist_pow: float = 1.0
    alpha: float = 0.95
    knn_backend: str = "torch"
    tau: float = 0.01
    r: int = 13
    pixel_backend: str = "auto"  # auto | triton | torch, see propagate_pixels
    tol: float = 1e-6
    maxiter: int = 10
    # Post-processing (docs/method.md, "Own protocols"); the defaults are LPOSS's protocol: none of it.
    logit_scale: float | None = None  # softmax(logit_scale * alias scores) at the original size; None: raw scores
    pamr_steps: int = 0  # PAMR rounds on the alias scores at the original size (NACLIP: 10)
    pamr_dilations: tuple[int, ...] = (8, 16)
    area_thd: float | None = None  # SCLIP's area threshold (needs logit_scale)
    prob_thd: float | None = None  # a pixel whose top class score is below it is labelled `background`
    background: int = 0  # the background class's index

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SegmentorSettings:
        """Pick this class's fields out of a (larger) config mapping; the rest is ignored."""
        names = {f.name for f in fields(cls)}
        values = {key: config[key] for key in names if key in config}
        if "pamr_dilations" in values:  # a list in the config; a tuple keeps the settings hashable
            values["pamr_dilations"] = tuple(int(d) for d in values["pamr_dilations"])
        return cls(**values)

    @property
    def post_processing(self) -> bool:
        """Whether the alias scores go through :func:`~segmentation.class_scores.probability_scores`."""
        return self.logit_scale is not None or self.pamr_steps > 0

    @property
    def method(self) -> str:
        """``"maskclip"``, ``"lposs"`` or ``"lposs_plus"``."""
        if not self.patch_propagation:
            return "maskclip"
        return "lposs_plus" if self.pixel_refine else "lposs"


@dataclass
class ImageEncoding:
    """What the backbones saw of one image: everything propagation needs, reusable across LP settings."""

    features: torch.Tensor  # [B, D, gh, gw] float32, B = windows of this image
    scores: torch.Tensor  # [B, A, gh, gw] float32 initial alias scores
    boxes: list[tuple[int, int, int, int]]  # the B windows (y1, y2, x1, x2) in resized pixels
    image: torch.Tensor  # [3, h, w] float in [0, 1], the resized image (pixel-level graph)
    original_size: tuple[int, int]  # (H, W) of the image before resizing
    patch_size: int = PATCH_SIZE  # DINO's patch size: patch (a, b) is centred at (y1 + p / 2 + p a, x1 + p / 2 + p b)


@dataclass(frozen=True)
class ClassColumns:
    """The alias columns of one class list in an encoding's scores (several datasets can share one encoding)."""

    columns: slice  # its columns of ImageEncoding.scores, e.g. slice(21, 41)
    alias_to_class: torch.Tensor  # [A] int64 in [0, K): class of each of its A columns


# Settings that change what the backbones see: a grid over them needs new encodings (see docs/method.md, "Pipeline").
ENCODING_FIELDS = ("short_side", "long_side", "crop", "stride")


class Segmentor:
    """Open-vocabulary segmentation with LPOSS, LPOSS+ or the MaskCLIP baseline.

    Two public stages: :meth:`encode_batch` (resize, windows, backbones) and :meth:`propagate` (label propagation
    with any settings, up to the class scores); :meth:`predict` runs both on one image. :meth:`propagate_columns`
    propagates several class lists of one encoding at once (datasets that share images), the graphs built once.
    """

    def __init__(
        self, backbones: Backbones, settings: SegmentorSettings | None = None, *, profile: bool = False
    ) -> None:
        self.backbones = backbones
        self.settings = settings or SegmentorSettings()
        sizes = tuple(getattr(backbones, "patch_sizes", ()))
        if self.settings.crop < 0 or any(self.settings.crop % size for size in sizes):
            raise ValueError(
                f"crop={self.settings.crop}: expected 0 (the whole image) or a multiple of the backbones' patch sizes "
                f"{sizes} (CLIP, DINO)"
            )
        # crop=0: the whole image, floor-cropped to a multiple of both patch sizes (windows.floor_to_multiple)
        self._multiple = math.lcm(*sizes) if sizes else getattr(backbones, "patch_size", PATCH_SIZE)
        self.profile = profile  # when True, stage_seconds accumulates synchronised wall time per stage
        self.stage_seconds: dict[str, float] = {}

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        if not self.profile:
            yield
            return
        device = self.backbones.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.perf_counter() - start

    def resize(self, image: np.ndarray) -> np.ndarray:
        """``[H, W, 3]`` uint8 RGB -> ``[h, w, 3]`` uint8 fitted to ``(long_side, short_side)`` (step 2, docs/method.md).

        Pure numpy (cv2), so that data-loader workers can run it.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be an [H, W, 3] uint8 RGB array, got shape {image.shape} dtype {image.dtype}")
        return resize_to_fit(image, self.settings.short_side, self.settings.long_side)

    def boxes(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        """The windows ``(y1, y2, x1, x2)`` of an ``[H, W, 3]`` image, in pixels of the resized image (steps 2-3)."""
        height, width = resized_size(image.shape[0], image.shape[1], self.settings.short_side, self.settings.long_side)
        return window_boxes(height, width, self.settings.crop, self.settings.stride)

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """``[H, W, 3]`` uint8 RGB -> resized ``[3, h, w]`` float in ``[0, 1]`` on the backbones' device (step 2)."""
        return self._to_tensor(self.resize(image))

    def _to_tensor(self, resized: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(resized)).to(self.backbones.device)
        return tensor.permute(2, 0, 1).float() / 255.0  # [3, h, w]

    @torch.no_grad()
    def encode_batch(
        self, resized_images: Sequence[np.ndarray], original_sizes: Sequence[tuple[int, int]]
    ) -> list[ImageEncoding]:
        """Run the windows of several images through the backbones together (steps 3-7, docs/method.md).

        Windows of equal size (all of them once the short side reaches ``crop``) share forwards of at most
        ``window_batch`` windows, whichever image they come from.

        Args:
            resized_images: ``[h, w, 3]`` uint8 RGB each, already resized by :meth:`resize`.
            original_sizes: ``(H, W)`` of each image before resizing.

        Returns:
            One :class:`ImageEncoding` per image, in order.
        """
        s = self.settings
        images = [self._to_tensor(resized) for resized in resized_images]
        boxes = [window_boxes(image.shape[1], image.shape[2], s.crop, s.stride) for image in images]
        windows = [window for image, bs in zip(images, boxes) for window in self._window_pixels(image, bs)]
        outputs = self._run_windows(windows, self.backbones)
        patch = getattr(self.backbones, "patch_size", PATCH_SIZE)
        encodings, first = [], 0
        for image, bs, size in zip(images, boxes, original_sizes):
            own = outputs[first : first + len(bs)]
            first += len(bs)
            features, scores = torch.stack([f for f, _ in own]), torch.stack([c for _, c in own])
            encodings.append(ImageEncoding(features, scores, bs, image, tuple(size), patch))
        return encodings

    def _window_pixels(self, image: torch.Tensor, boxes: Sequence[tuple[int, int, int, int]]) -> list[torch.Tensor]:
        """The ``[3, h', w']`` pixels of each box of a ``[3, h, w]`` image that the backbones see: the box itself,
        or, with ``crop=0``, the box floor-cropped to a multiple of both patch sizes (NACLIP's whole image)."""
        windows = [image[:, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes]
        if self.settings.crop == 0:
            return [floor_to_multiple(window, self._multiple) for window in windows]
        return windows

    def _run_windows(self, windows: Sequence[torch.Tensor], forward: Callable) -> list[tuple[torch.Tensor, ...]]:
        """``forward`` on batches of equal-size windows (at most ``window_batch`` each, whichever image they come
        from); its outputs (a tuple of ``[b, ...]`` tensors) split back per window, float32, in order."""
        outputs: list[tuple[torch.Tensor, ...] | None] = [None] * len(windows)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, window in enumerate(windows):
            by_shape.setdefault(tuple(window.shape), []).append(index)
        with self._stage("backbones"):
            for indices in by_shape.values():
                for start in range(0, len(indices), self.settings.window_batch):
                    chunk = indices[start : start + self.settings.window_batch]
                    result = forward(torch.stack([windows[i] for i in chunk]))  # [b, 3, h, w] in
                    for row, index in enumerate(chunk):
                        outputs[index] = tuple(part[row].float() for part in result)
        return outputs

    def encode(self, image: np.ndarray) -> ImageEncoding:
        """One ``[H, W, 3]`` uint8 RGB image through resize, windows and backbones (steps 2-7, docs/method.md)."""
        return self.encode_batch([self.resize(image)], [image.shape[:2]])[0]

    def _check_encoding_settings(self, settings: SegmentorSettings) -> None:
        for name in ENCODING_FIELDS:
            if getattr(settings, name) != getattr(self.settings, name):
                raise ValueError(
                    f"propagate: settings.{name}={getattr(settings, name)} differs from the encoding's "
                    f"{getattr(self.settings, name)}; encode again with a Segmentor of those settings"
                )

    @torch.no_grad()
    def alias_scores(self, encoding: ImageEncoding, settings: SegmentorSettings | None = None) -> torch.Tensor:
        """Per-alias scores at the resized resolution after the configured propagation (steps 8-10, docs/method.md).

        Args:
            encoding: from :meth:`encode_batch`.
            settings: propagation settings (default: this segmentor's); its encoding fields must match.

        Returns:
            ``[A, h, w]`` float32.
        """
        s = settings or self.settings
        self._check_encoding_settings(s)
        return self._propagate_block(encoding, s, encoding.scores, ImageGraphs(encoding))

    def _propagate_block(
        self, encoding: ImageEncoding, s: SegmentorSettings, scores: torch.Tensor, graphs: ImageGraphs
    ) -> torch.Tensor:
        """Steps 8-10 on some alias columns ``scores [B, A, gh, gw]`` of ``encoding`` -> ``[A, h, w]``."""
        image = encoding.image
        if s.patch_propagation:
            b, a, gh, gw = scores.shape
            flat_scores = scores.permute(0, 2, 3, 1).reshape(-1, a)  # [B * gh * gw, A]
            with self._stage("patch_lp"):
                flat_scores = solve_patches(flat_scores, graphs.patch(s), alpha=s.alpha, tol=s.tol, maxiter=s.maxiter)
            scores = flat_scores.reshape(b, gh, gw, a).permute(0, 3, 1, 2)  # back to [B, A, gh, gw]
        canvas = merge_windows(scores, encoding.boxes, image.shape[1], image.shape[2])
        if s.pixel_refine:
            with self._stage("pixel_lp"):
                canvas = graphs.pixel(s).propagate(canvas, alpha=s.alpha, tol=s.tol, maxiter=s.maxiter)
        return canvas

    @torch.no_grad()
    def propagate(self, encoding: ImageEncoding, settings: SegmentorSettings | None = None) -> torch.Tensor:
        """Class scores at the original size from an encoding (steps 8-12, docs/method.md, before the argmax).

        Args:
            encoding: from :meth:`encode_batch` of this segmentor.
            settings: propagation settings (default: this segmentor's); ``short_side``, ``long_side``,
                ``crop`` and ``stride`` must equal the segmentor's (they shaped the encoding).

        Returns:
            ``[K, H, W]`` float32, K = number of classes.
        """
        every_column = ClassColumns(slice(None), self.backbones.alias_to_class)
        return self.propagate_columns(encoding, settings, [every_column])[0]

    @torch.no_grad()
    def propagate_columns(
        self,
        encoding: ImageEncoding,
        settings: SegmentorSettings | None,
        groups: Sequence[ClassColumns],
        graphs: ImageGraphs | None = None,
    ) -> list[torch.Tensor]:
        """:meth:`propagate` for several class lists whose alias columns share one encoding (datasets of a shared pass).

        The graphs are built once (or taken from ``graphs``, which then keeps them for other settings); each list
        then gets its own max over aliases and its own resize to the original size.

        Args:
            encoding: from :meth:`encode_batch` of this segmentor, with the columns of every group.
            settings: as in :meth:`propagate`.
            groups: the column ranges and alias-to-class maps of the class lists wanted.
            graphs: an :class:`~segmentation.image_graphs.ImageGraphs` of ``encoding`` to take graphs from.

        Returns:
            One ``[K_g, H, W]`` float32 per group, equal bit for bit on the CPU to :meth:`propagate` on an
            encoding of that group's class list alone.
        """
        s = settings or self.settings
        self._check_encoding_settings(s)
        graphs = graphs if graphs is not None else ImageGraphs(encoding)
        canvases: list[torch.Tensor] = []
        for block in _solve_blocks(groups, encoding.scores.device):
            parts = [encoding.scores[:, group.columns] for group in block]
            scores = parts[0].contiguous() if len(parts) == 1 else torch.cat(parts, 1)
            canvas = self._propagate_block(encoding, s, scores, graphs)
            canvases += canvas.split([part.shape[1] for part in parts])
        out = []
        for group, canvas in zip(groups, canvases):
            alias_to_class = group.alias_to_class
            num_classes = int(alias_to_class.max()) + 1
            if s.post_processing:  # the baselines' order: resize, PAMR, softmax, max over aliases, area_thd
                out.append(_post_processed(canvas, encoding, alias_to_class, num_classes, s))
                continue
            # As the reference: aliases are propagated as separate columns, the max over them comes after.
            classes = max_over_aliases(canvas, alias_to_class, num_classes)
            out.append(
                F.interpolate(classes[None], size=encoding.original_size, mode="bilinear", align_corners=False)[0]
            )
        return out

    def labels(self, scores: torch.Tensor, settings: SegmentorSettings | None = None) -> torch.Tensor:
        """Label map ``[H, W]`` int64 of class scores ``[K, H, W]``: the argmax, and the background class where the
        top score is below ``settings.prob_thd`` (default: this segmentor's settings)."""
        s = settings or self.settings
        return labels_with_background(scores, s.prob_thd, s.background)

    @torch.no_grad()
    def refine(
        self, image: np.ndarray, scores: torch.Tensor, boxes: Sequence[tuple[int, int, int, int]] | None = None
    ) -> torch.Tensor:
        """LPOSS or LPOSS+ (this segmentor's settings) on another method's class scores (docs/method.md,
        "External scores"): they stand in for the CLIP scores; the graphs are this image's DINO graphs.

        Args:
            image: ``[H, W, 3]`` uint8 RGB.
            scores: ``[C, h, w]`` for the whole image, any ``h, w`` (sampled bilinearly at the patch centres), or
                ``[B, C, h, w]`` per window, any grid (resized bilinearly to DINO's), one per box.
            boxes: the windows ``(y1, y2, x1, x2)`` of per-window scores in pixels of the resized image, all of one
                size; default: this segmentor's own windows (:meth:`boxes`). With ``crop=0`` the backbones see each
                box floor-cropped to a multiple of both patch sizes, as in :meth:`encode_batch`.

        Returns:
            ``[C, H, W]`` float32 refined scores at the image's size, one per score row (no alias max; the argmax
            over ``C`` is the label map).
        """
        resized = self.resize(image)
        tensor = self._to_tensor(resized)
        size = (tensor.shape[1], tensor.shape[2])
        boxes = list(boxes) if boxes is not None else self.boxes(image)
        check_boxes(boxes, size)
        features_of = getattr(self.backbones, "features", None)
        forward = (lambda w: (features_of(w),)) if features_of is not None else (lambda w: self.backbones(w)[:1])
        windows = self._window_pixels(tensor, boxes)
        features = torch.stack([out[0] for out in self._run_windows(windows, forward)])  # [B, D, gh, gw]
        patch = getattr(self.backbones, "patch_size", PATCH_SIZE)
        grid = (features.shape[2], features.shape[3])
        initial = scores_per_window(scores.to(tensor.device), boxes, grid, size, patch)  # [B, C, gh, gw]
        encoding = ImageEncoding(features, initial, boxes, tensor, tuple(image.shape[:2]), patch)
        columns = ClassColumns(slice(None), torch.arange(initial.shape[1], device=tensor.device))
        return self.propagate_columns(encoding, None, [columns])[0]

    def predict_scores(self, image: np.ndarray) -> torch.Tensor:
        """Class scores ``[K, H, W]`` float32 at the original size of an ``[H, W, 3]`` uint8 RGB image (steps 2-12)."""
        return self.propagate(self.encode(image))

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Label map ``[H, W]`` int64 of class indices for an ``[H, W, 3]`` uint8 RGB image."""
        return self.labels(self.predict_scores(image)).cpu().numpy()


def _post_processed(
    canvas: torch.Tensor, encoding: ImageEncoding, alias_to_class: torch.Tensor, num_classes: int, s: SegmentorSettings
) -> torch.Tensor:
    """The baselines' post-processing of one class list's alias canvas ``[A, h, w]`` -> ``[K, H, W]``."""
    return probability_scores(
        canvas,
        encoding.image,
        encoding.original_size,
        alias_to_class,
        num_classes,
        logit_scale=s.logit_scale,
        pamr_steps=s.pamr_steps,
        pamr_dilations=s.pamr_dilations,
        area_thd=s.area_thd,
        background=s.background,
    )


def _solve_blocks(groups: Sequence[ClassColumns], device: torch.device) -> list[list[ClassColumns]]:
    """The groups whose columns go through one CG together: all of them on a GPU, each on its own on the CPU.

    Every column is its own CG, so batching changes no result in exact arithmetic; in float32 it does change the
    last bits on the CPU, where the CG's dot products over strided columns, the channels-last resize of
    merge_windows and the pixel level's column chunks all round differently with the number of columns. Solved
    apart, each group runs the very operations of a run of its class list alone (the graph built once either
    way), so a dataset of a shared pass keeps the metrics and label maps of its own run bit for bit.
    """
    if device.type == "cpu":
        return [[group] for group in groups]
    return [list(groups)] if groups else []
