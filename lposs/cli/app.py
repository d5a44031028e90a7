"""A small Gradio web app: upload an image, type class names, pick a method, get the coloured overlay.

Usage::

    python tools/app.py                                 # then open http://127.0.0.1:7860
    python tools/app.py --port 8080 device=cpu model.templates=single

``key=value`` overrides are those of ``main_eval.py``, applied to ``configs/lposs.yaml``; the method chosen in
the app sets ``patch_propagation`` and ``pixel_refine``. Gradio is installed by ``requirements.txt``. The model
config (names, patch sizes, tags, weight files, dtype) is checked at start-up, and a bad value stops the app with one
line (exit code 2); the models themselves are built on the first request.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from lposs.cli.demo import (
    METHODS,
    ImageSegmenter,
    display_names,
    method_settings,
    method_titles,
    overlay_figure,
    parse_classes,
    pick_device,
    to_rgb_array,
)
from lposs.evaluation.config import load_config
from lposs.evaluation.device import apply_precision, current_device
from lposs.evaluation.visualise import palette
from lposs.segmentation import SegmentorSettings

EXAMPLE_CLASSES = "person,dog,cat,grass,tree,building,sky;cloud"


class SegmentationService:
    """What the app's button calls: the models are built on the first request, then kept.

    Requests are served one at a time (the class list lives on the shared backbones).
    """

    def __init__(self, config_overrides: Sequence[str] = ()) -> None:
        from lposs.models import check_model_config

        self.config = load_config("lposs.yaml", config_overrides)  # bad overrides fail now, not on the first click
        self.settings = SegmentorSettings.from_config(self.config)
        self.device = pick_device(self.config.device)
        apply_precision(self.config.strict_float32)  # process-wide flags: they reach Gradio's worker threads
        check_model_config(self.config.model, self.device, crop=self.config.crop)  # no weights are read here
        self.backbones = None
        self._lock = threading.Lock()

    def _models(self):
        if self.backbones is None:
            from lposs.models import LPOSSBackbones  # heavy: only once the first image arrives

            torch.manual_seed(self.config.seed)  # random-init backbones (pretrained=null) are then reproducible
            self.backbones = LPOSSBackbones.from_config(self.config.model, self.device).eval()
        return self.backbones

    def segment(self, picture: Image.Image | None, classes_text: str, method: str) -> np.ndarray:
        """PIL image + ``"cat,dog,sky;cloud"`` + method name -> ``[H, W', 3]`` uint8 overlay with legend.

        Raises:
            ValueError: no image, a bad class list or an unknown method (the message is shown in the app).
        """
        if picture is None:
            raise ValueError("upload an image first")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
        classes = parse_classes(classes_text)
        image = to_rgb_array(picture)
        # Gradio calls this on its worker threads, whose current CUDA device is 0: make the app's device current.
        with self._lock, current_device(self.device):
            segmenter = ImageSegmenter(self._models(), method_settings(self.settings, method), classes)
            labels = segmenter(image)[method]
        return overlay_figure(image, labels, display_names(classes), palette(len(classes)))


def build_app(config_overrides: Sequence[str] = ()) -> Any:
    """The Gradio ``Blocks`` app (nothing is launched and no model is built here).

    Raises:
        ImportError: Gradio is not installed.
        ConfigError: a bad ``key=value`` override.
        ModelConfigError: a model config value that cannot work (unknown model, patch size, tag, file, dtype).
    """
    try:
        import gradio as gr
    except ImportError as error:
        raise ImportError(
            "the LPOSS web app needs Gradio, which requirements.txt installs; install it with: pip install gradio"
        ) from error
    service = SegmentationService(config_overrides)

    def run(picture: Image.Image | None, classes_text: str, method: str) -> np.ndarray:
        try:
            return service.segment(picture, classes_text, method)
        except (ValueError, RuntimeError) as error:  # bad input, or weights that cannot be loaded offline
            raise gr.Error(str(error)) from error

    with gr.Blocks(title="LPOSS open-vocabulary segmentation") as app:
        gr.Markdown(
            "## LPOSS / LPOSS+ open-vocabulary segmentation\nClasses: comma-separated; "
            "`;` separates aliases of one class (`sky;cloud`). The first request builds the models."
        )
        with gr.Row():
            image_in = gr.Image(type="pil", image_mode=None, label="image")
            image_out = gr.Image(type="numpy", label="segmentation", interactive=False)
        classes = gr.Textbox(value=EXAMPLE_CLASSES, label="classes")
        titles = method_titles(service.config.model.clip.head)  # the baseline is the configured head's
        method = gr.Radio([(titles[m], m) for m in METHODS], value="lposs_plus", label="method")
        button = gr.Button("Segment", variant="primary")
        button.click(run, inputs=[image_in, classes, method], outputs=image_out)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: all interfaces)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. device=cpu")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    try:
        app = build_app(args.overrides)
    except (ImportError, ValueError) as error:  # no Gradio; ConfigError or ModelConfigError (both ValueErrors)
        print(f"error: {error}", file=sys.stderr)
        return 2
    app.launch(server_name=args.host, server_port=args.port)
    return 0


def cli() -> int:
    """The console script ``lposs-app``."""
    return main(parse_args())


if __name__ == "__main__":
    sys.exit(cli())
