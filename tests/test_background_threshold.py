"""prob_thd and background on users' data (docs/demo.md, docs/datasets.md): a folder of images (--images) and a dataset
file, against the label maps made by hand from the same config's class scores."""

import numpy as np
import torch
from fake_datasets import make_user_dataset
from PIL import Image
from test_main_eval import SMALL, TINY, run, shared_backbones

from lposs.api import Predictor
from lposs.evaluation.config import load_config
from lposs.models import LPOSSBackbones

assert shared_backbones  # the autouse fixture of test_main_eval: one set of random backbones per model config
CLASSES = "background,sky;cloud,tree,person"
SCALE = ["logit_scale=40"]


def _scores(config, classes, images):
    """Class scores of each image by the Python API on the session's shared backbones (as main_eval builds them)."""
    cache = shared_backbones.__dict__.setdefault("cache", {})
    key = (repr(config.model), "cpu")
    if key not in cache:
        torch.manual_seed(config.seed)
        cache[key] = LPOSSBackbones.from_config(config.model, "cpu")
    cache[key].set_heads(config.model.clip.head, config.model.dino.features)
    predictor = Predictor(config, cache[key].eval(), classes)
    return [predictor.predict_scores(image).numpy() for image in images]


def _by_hand(scores, prob_thd, background):
    return np.where(scores.max(0) < prob_thd, background, scores.argmax(0))


def test_folder_mode_labels_pixels_below_prob_thd_as_the_background_class(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (40, 60), "b.png": (48, 48)}.items():
        ramp = np.linspace(0, 255, w)[None, :, None] * np.array([1.0, 0.3, 0.6])
        Image.fromarray(np.clip(ramp + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)).save(photos / name)
    config = load_config("lposs.yaml", [*TINY, *SMALL, *SCALE])
    scores = _scores(config, CLASSES.split(","), [photos / "a.png", photos / "b.png"])
    prob_thd = float(np.quantile(np.concatenate([s.max(0).ravel() for s in scores]), 0.4))
    for background in (2,):  # not 0: a background index that the argmax alone rarely gives
        out = tmp_path / f"out{background}"
        extra = [f"prob_thd={prob_thd}", f"background={background}"]
        args = ["lposs.yaml", "--images", str(photos), "--classes", CLASSES, "--save_predictions", str(out)]
        assert run([*args, *TINY, *SMALL, *SCALE, *extra]) == 0
        for name, s in zip(("a", "b"), scores):
            expected = _by_hand(s, prob_thd, background)
            assert len(np.unique(expected)) >= 2 and (s.max(0) < prob_thd).any()
            np.testing.assert_array_equal(np.array(Image.open(out / "labels" / f"{name}.png")), expected)


def test_a_dataset_file_run_labels_pixels_below_prob_thd_as_the_background_class(tmp_path):
    path, _ = make_user_dataset(
        tmp_path, 'name: mydata\nimages: images\nlabels: labels\nclasses: ["sky;cloud", tree, road]\n'
    )
    runs = {}
    for name, extra in {"plain": [], "threshold": ["prob_thd=1.01", "background=2"]}.items():
        out = tmp_path / name
        assert (
            run(["lposs.yaml", "--dataset", str(path), "--save_predictions", str(out), *TINY, *SMALL, *SCALE, *extra])
            == 0
        )
        runs[name] = [np.array(Image.open(p)) for p in sorted(out.rglob("*.png"))]
    assert runs["plain"] and not any((labels == 2).any() for labels in runs["plain"])  # the argmax never gives 2
    assert all((labels == 2).all() for labels in runs["threshold"])  # every probability is below 1.01
