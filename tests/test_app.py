"""tools/app.py: the Gradio app builds without launching or loading models; the service segments lazily."""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import TINY_OVERRIDES

from lposs.cli.app import SegmentationService, build_app, main, parse_args

TINY = [*TINY_OVERRIDES, "short_side=112", "long_side=224", "crop=112", "stride=56"]


def test_missing_gradio_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` raise ImportError
    with pytest.raises(ImportError, match="pip install gradio"):
        build_app(TINY)


def test_app_builds_without_loading_models(monkeypatch):
    gr = pytest.importorskip("gradio")
    from lposs import models

    monkeypatch.setattr(models.LPOSSBackbones, "from_config", lambda *a, **k: pytest.fail("models built at build time"))
    assert isinstance(build_app(TINY), gr.Blocks)


def test_method_choices_name_the_configured_head(monkeypatch):
    gr = pytest.importorskip("gradio")
    from lposs import models

    monkeypatch.setattr(models.LPOSSBackbones, "from_config", lambda *a, **k: pytest.fail("models built at build time"))
    radios = [b for b in build_app([*TINY, "model.clip.head=sclip"]).blocks.values() if isinstance(b, gr.Radio)]
    assert [label for label, _ in radios[0].choices] == ["SCLIP", "LPOSS (SCLIP)", "LPOSS+ (SCLIP)"]


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


def test_bad_model_config_stops_the_app_at_start(monkeypatch, capsys):
    from lposs import models

    monkeypatch.setattr(models.LPOSSBackbones, "from_config", lambda *a, **k: pytest.fail("models were loaded"))
    with pytest.raises(models.ModelConfigError, match="model.dino.name='resnet50'"):
        SegmentationService([*TINY, "model.dino.name=resnet50"])
    pytest.importorskip("gradio")
    assert main(parse_args([*TINY, "model.clip.name=ViT-B-32"])) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    expected = "error: crop=112: expected 0 (the whole image) or a multiple of the patch sizes of model.clip.name='ViT-B-32' (32)"
    assert len(lines) == 1 and lines[0].startswith(expected), lines  # a patch size that crop=112 does not fit


def test_gradio_is_said_to_come_with_requirements():
    import lposs.cli.app as app_module

    requirements = (Path(__file__).resolve().parents[1] / "requirements.txt").read_text()
    assert re.search(r"^gradio\b", requirements, flags=re.MULTILINE)  # what the app's text now says
    assert "not in requirements.txt" not in app_module.__doc__ and "requirements.txt" in app_module.__doc__
