"""tools/app.py: the Gradio app builds without launching or loading models; the service segments lazily."""

import sys

import numpy as np
import pytest
from PIL import Image
from tiny_models import TINY_OVERRIDES

from tools.app import SegmentationService, build_app

TINY = [*TINY_OVERRIDES, "short_side=112", "long_side=224", "crop=112", "stride=56"]


def test_missing_gradio_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` raise ImportError
    with pytest.raises(ImportError, match="pip install gradio"):
        build_app(TINY)


def test_app_builds_without_loading_models(monkeypatch):
    gr = pytest.importorskip("gradio")
    import models

    monkeypatch.setattr(models.LPOSSBackbones, "from_config", lambda *a, **k: pytest.fail("models built at build time"))
    assert isinstance(build_app(TINY), gr.Blocks)


def test_service_builds_models_on_first_request():
    service = SegmentationService(TINY)
    assert service.backbones is None
    rgba = np.zeros((90, 120, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = np.arange(120, dtype=np.uint8)[None] * 2, 255
    out = service.segment(Image.fromarray(rgba), "cat, sky;cloud", "lposs")
    assert service.backbones is not None
    assert out.dtype == np.uint8 and out.shape[0] >= 90 and out.shape[1] > 120 and out.shape[2] == 3
    with pytest.raises(ValueError, match="twice"):
        service.segment(Image.fromarray(rgba), "cat,cat", "lposs")
    with pytest.raises(ValueError, match="upload an image"):
        service.segment(None, "cat", "lposs")
