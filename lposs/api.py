"""The one-line API: ``lposs.load(config, classes=...)`` -> a :class:`Predictor` with ``predict`` / ``predict_scores``.

It builds what ``main_eval.py`` and ``tools/demo.py`` build, from the same config names, ``key=value`` overrides
and weight options, and checks them the same way before any weights load. Unlike those programs it leaves the
caller's process-wide state as it found it (docs/api.md, section 'Global state'): the global RNG is untouched
(random-init weights come from a forked, seeded generator), and the float32 precision flags and the current CUDA
device are set only for the duration of each of its own calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lposs.datasets.image_files import load_image, to_rgb_array
from lposs.evaluation.config import load_config
from lposs.evaluation.device import current_device, pick_device, precision
from lposs.models import LPOSSBackbones, check_model_config
from lposs.segmentation import Segmentor, SegmentorSettings

ImageLike = np.ndarray | Image.Image | str | Path


class Predictor:
    """A ready segmentor: backbones loaded, class names set. Made by :func:`load`.

    Attributes:
        config: the resolved config (``omegaconf.DictConfig``), as ``main_eval.py`` would save it.
        classes: the class names, ``;`` aliases included, in output order.
        backbones: the :class:`~lposs.models.LPOSSBackbones` (CLIP and DINO).
        segmentor: the :class:`~lposs.segmentation.Segmentor` behind ``predict``.
    """

    def __init__(self, config: Any, backbones: LPOSSBackbones, classes: Sequence[str]) -> None:
        self.config = config
        self.backbones = backbones
        self.segmentor = Segmentor(backbones, SegmentorSettings.from_config(config))
        self.classes: list[str] = []
        self.set_classes(classes)

    def _own_settings(self) -> contextlib.ExitStack:
        """The config's float32 precision and the model's CUDA device as current, for one call; the caller's after."""
        stack = contextlib.ExitStack()
        stack.enter_context(precision(self.config.strict_float32))
        stack.enter_context(current_device(self.device))
        return stack

    def set_classes(self, classes: Sequence[str]) -> None:
        """Replace the class list (``;`` separates aliases of one class); the backbones stay loaded."""
        classes = list(classes)
        if not classes or any(not isinstance(name, str) or not name.strip() for name in classes):
            raise ValueError(f"classes must be a non-empty list of non-empty names, got {classes!r}")
        with self._own_settings():  # the text encoder runs here
            self.backbones.set_classes(classes)
        self.classes = classes

    @property
    def device(self) -> torch.device:
        return self.backbones.device

    def predict_scores(self, image: ImageLike) -> torch.Tensor:
        """Class scores ``[C, H, W]`` float32 (on the model's device) at the image's original size.

        Args:
            image: ``[H, W, 3]`` uint8 RGB array, a PIL image, or an image file's path.
        """
        with self._own_settings():
            return self.segmentor.predict_scores(as_rgb_array(image))

    def predict(self, image: ImageLike) -> np.ndarray:
        """Label map ``[H, W]`` int64 of indices into :attr:`classes` (argmax of :meth:`predict_scores`)."""
        with self._own_settings():
            return self.segmentor.predict(as_rgb_array(image))

    def refine(
        self, image: ImageLike, scores: torch.Tensor, boxes: Sequence[tuple[int, int, int, int]] | None = None
    ) -> torch.Tensor:
        """Another method's class scores refined by this config's LPOSS / LPOSS+ over the image's DINO graph.

        Args:
            image: as for :meth:`predict`.
            scores: ``[C, h, w]`` for the whole image (any size), or ``[B, C, h, w]`` per window with ``boxes``.
            boxes: windows ``(y1, y2, x1, x2)`` in the resized image; see :meth:`~lposs.segmentation.Segmentor.refine`.

        Returns:
            ``[C, H, W]`` float32 refined scores at the image's original size (the class list is not used).
        """
        with self._own_settings():
            return self.segmentor.refine(as_rgb_array(image), scores, boxes)


def as_rgb_array(image: ImageLike) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB from an array of that form, a PIL image or a path (read as ``tools/demo.py`` does)."""
    if isinstance(image, (str, Path)):
        return load_image(Path(image))
    if isinstance(image, Image.Image):
        return to_rgb_array(image)
    return image


def _overrides(overrides: Sequence[str] | Mapping[str, Any]) -> list[str]:
    if isinstance(overrides, Mapping):
        return [f"{key}={'null' if value is None else value}" for key, value in overrides.items()]
    return list(overrides)


def load(
    config: str | Path = "lposs_plus",
    classes: Sequence[str] = (),
    *,
    device: str | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> Predictor:
    """Build LPOSS, LPOSS+ or a baseline from a config and a class list, weights loaded, ready to predict.

    Args:
        config: a config name (``"lposs_plus"``, ``"lposs.yaml"``, ``"naclip"``) or a YAML file's path.
        classes: class names in output order; ``;`` separates aliases of one class (``"sky;cloud"``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``; default: the config's ``device``.
        overrides: ``key=value`` strings as on ``main_eval.py``'s command line (``["k=200",
            "model.clip.pretrained=/weights/clip.bin"]``), or a mapping ``{"k": 200}`` (``None`` -> null).

    Returns:
        A :class:`Predictor`.

    Raises:
        ConfigError, ModelConfigError (``ValueError``): a config file, key or value that cannot be used,
            checked before any weights load.
        WeightsUnavailableError: hub weights that are neither cached nor downloadable (offline).
    """
    name = str(config)
    if not name.endswith((".yaml", ".yml")) and not Path(name).is_file():
        name += ".yaml"
    overrides = _overrides(overrides) + ([f"device={device}"] if device is not None else [])
    resolved = load_config(name, overrides)
    torch_device = pick_device(resolved.device, current=False)  # current only during the predictor's calls
    # names, tags, files, dtype, the windows a multiple of both patch sizes: before any weights load
    check_model_config(resolved.model, torch_device, crop=resolved.crop)
    # Random-init backbones (pretrained=null) are reproducible: built on the CPU (models.factory) from the CPU
    # generator seeded here, inside a fork whose end gives the caller back its own RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(resolved.seed)
        with precision(resolved.strict_float32), current_device(torch_device):
            backbones = LPOSSBackbones.from_config(resolved.model, torch_device).eval()
    return Predictor(resolved, backbones, classes)
