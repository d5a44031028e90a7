"""Segmenting a folder of unlabelled images (lposs/evaluation/folder_run.py, main_eval.py --images): every output,
the no-lost-results rules, the Python API, what --resume checks, and --resume after a SIGKILL (two ranks:
test_work_queue.py).

The killed run is a real process, forked from the test process: they share its imported modules
and its random-weight backbones copy-on-write, so that they start at once instead of in ten seconds each.
"""

import os
import shutil
import signal

import numpy as np
import pytest
import torch
from fake_datasets import make_dataset
from forking import exit_codes, forked
from PIL import Image
from test_faults import beside
from test_main_eval import (  # noqa: F401 (shared_backbones: the autouse fixture)
    SMALL,
    TINY_TEXT,
    assert_one_line_error,
    refuse_model_loading,
    run,
    shared_backbones,
)

import lposs
from lposs.api import Predictor
from lposs.cli import main_eval
from lposs.datasets import DatasetError
from lposs.evaluation.config import load_config
from lposs.models import LPOSSBackbones
from lposs.outputs.lock import OutputLock
from lposs.segmentation import Segmentor

CLASSES = "sky;cloud,tree,person"
# Sorted by path, the run's order is a/b/x2.png, a/x1.jpg, broken.jpg, y.png.
IMAGES = {"a/b/x2.png": (50, 36), "a/x1.jpg": (40, 60), "y.png": (48, 48)}


# Four quadrants of strong colours: on these the tiny random model (TINY_TEXT) gives 2 or 3 classes in every image
# (measured: a smooth ramp gave one class everywhere, and a constant label map equals any other)
QUADRANTS = [(250, 220, 0), (20, 40, 220), (30, 200, 40), (20, 20, 20)]


def quadrants(h, w):
    """A ``[h, w, 3]`` uint8 image of four flat colours."""
    image = np.empty((h, w, 3), np.uint8)
    image[: h // 2, : w // 2], image[: h // 2, w // 2 :] = QUADRANTS[0], QUADRANTS[1]
    image[h // 2 :, : w // 2], image[h // 2 :, w // 2 :] = QUADRANTS[2], QUADRANTS[3]
    return image


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three images in sub-folders, a corrupt JPEG, and files that are not images (skipped)."""
    folder = tmp_path_factory.mktemp("photos")
    for name, (h, w) in IMAGES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(quadrants(h, w)).save(folder / name, quality=95)
    (folder / "broken.jpg").write_bytes((folder / "a/x1.jpg").read_bytes()[:200])  # a truncated JPEG
    (folder / ".hidden.jpg").write_bytes((folder / "y.png").read_bytes())
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def reference(photos):
    """A predictor of the same config (on the session's shared backbones), and its label maps and scores of each
    image, one image at a time (``Predictor.predict_scores``: no loader, no batching, no shares)."""
    config = load_config("lposs_plus.yaml", [*TINY_TEXT, *SMALL])
    cache = shared_backbones.__dict__.setdefault("cache", {})
    key = (repr(config.model), "cpu")
    if key not in cache:
        torch.manual_seed(config.seed)  # as main_eval.py and lposs.load build random-init weights
        cache[key] = LPOSSBackbones.from_config(config.model, "cpu")
    cache[key].set_heads(config.model.clip.head, config.model.dino.features)
    predictor = Predictor(config, cache[key].eval(), CLASSES.split(","))
    scores = {name: predictor.predict_scores(photos / name).numpy() for name in IMAGES}
    labels = {name: s.argmax(0) for name, s in scores.items()}
    assert all(len(np.unique(label)) >= 2 for label in labels.values())  # maps that vary: comparisons see something
    return predictor, labels, scores


def read_labels(out):
    found = {p.relative_to(out / "labels").as_posix(): np.array(Image.open(p)) for p in (out / "labels").rglob("*.png")}
    return {name: found.get(os.path.splitext(name)[0] + ".png") for name in IMAGES} | {"files": sorted(found)}


def assert_labels_equal(out, reference_labels):
    labels = read_labels(out)
    assert labels["files"] == sorted(os.path.splitext(name)[0] + ".png" for name in IMAGES)
    for name in IMAGES:
        np.testing.assert_array_equal(labels[name], reference_labels[name])


def outputs_of(out):
    """Bytes, inode and mtime of every output file (labels, scores, overlays)."""
    return {
        p: (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns)
        for kind in ("labels", "scores", "overlays")
        for p in sorted((out / kind).rglob("*"))
        if p.is_file()
    }


def folder_args(photos, out, *extra):
    return ["lposs_plus.yaml", "--images", str(photos), "--classes", CLASSES, "--save_predictions", str(out)] + [
        *extra,
        *TINY_TEXT,
        *SMALL,
    ]


def test_every_output_of_a_folder_and_the_rules_of_a_second_run(photos, reference, tmp_path, capsys, monkeypatch):
    _, labels, scores = reference
    out = tmp_path / "out"
    out.mkdir()  # a folder that exists and is empty (mktemp -d, a volume) is a new run's folder
    assert run(folder_args(photos, out, "--save_scores", "--save_visualisations", "1")) == 0
    printed = capsys.readouterr()
    assert (
        f"4 images: 3 segmented, 1 skipped (could not be read or segmented; listed in {out}/skipped.txt)" in printed.out
    )
    assert f"skipped: cannot read image {photos}/broken.jpg" in printed.err
    assert "rank 0/1: 100% 4/4" in printed.err and "images/s]" in printed.err  # the progress line, at its end
    assert_labels_equal(out, labels)  # equal to the one-image API, image by image
    for name in IMAGES:
        png = Image.open(out / "labels" / (os.path.splitext(name)[0] + ".png"))
        assert png.mode == "P" and png.size[::-1] == IMAGES[name]
        saved = np.load(out / "scores" / (os.path.splitext(name)[0] + ".npy"))
        assert saved.dtype == np.float16 and saved.shape == (3, *IMAGES[name])
        np.testing.assert_array_equal(saved, scores[name].astype(np.float16))
    overlays = sorted(p.relative_to(out / "overlays").as_posix() for p in (out / "overlays").rglob("*.png"))
    assert overlays == ["a/b/x2.png"]  # --save_visualisations 1: the first image in the run's order
    assert (out / "skipped.txt").read_text().startswith("broken.jpg\tcannot read image")
    assert not list(out.rglob(".*")) and beside(out) == []  # no temporary file, no lock left
    before = outputs_of(out)
    # a new run refuses a folder with outputs; --resume refuses other classes; both before any weights load
    with monkeypatch.context() as patch:
        refuse_model_loading(patch)
        assert_one_line_error(capsys, run(folder_args(photos, out)), f"--save_predictions {out} already holds files")
        code = run(folder_args(photos, out, "--resume", "--classes", "sky,tree,person"))
        assert_one_line_error(capsys, code, "--resume", "run.json records other classes")
        code = run(folder_args(photos, out, "--resume", "k=5"))
        assert_one_line_error(capsys, code, "run.json records other settings.k (400 there, 5 in this run)")
        code = run(folder_args(photos, out, "--resume", "model.clip.head=sclip"))
        assert_one_line_error(capsys, code, "run.json records other model.clip.head ('maskclip' there, 'sclip'")
        assert_one_line_error(capsys, run(folder_args(photos, photos / "a" / "out")), "is inside --images")
        held = OutputLock.acquire(tmp_path / "held")  # another run's lock: refused before the weights load too
        try:
            assert_one_line_error(capsys, run(folder_args(photos, tmp_path / "held")), "is in use by another run")
        finally:
            held.release()
    assert outputs_of(out) == before
    # --resume with the same classes and settings: nothing to redo, no finished file rewritten
    assert run(folder_args(photos, out, "--resume", "--save_scores", "--save_visualisations", "1")) == 0
    assert "4 images: 0 segmented, 3 already complete (--resume), 1 skipped" in capsys.readouterr().out
    assert outputs_of(out) == before


def test_segment_folder_from_python(photos, reference, tmp_path):
    predictor, labels, _ = reference
    predictor.set_classes(CLASSES.split(","))  # the backbones are shared with the runs of other tests
    out = tmp_path / "out"
    first = lposs.segment_folder(predictor, photos, out, limit=2, report=False)
    assert (first.images, first.segmented, first.complete_before, first.failed) == (2, 2, 0, [])
    rest = lposs.segment_folder(predictor, photos, out, resume=True, report=False)
    assert (rest.images, rest.segmented, rest.complete_before) == (4, 1, 2)
    assert [path for path, _ in rest.failed] == ["broken.jpg"] and "cannot read image" in rest.failed[0][1]
    assert_labels_equal(out, labels)
    # a bare Segmentor records its model too: other weights are refused, the same ones accepted
    bare, bare_out = predictor.segmentor, tmp_path / "bare"
    lposs.segment_folder(bare, photos, bare_out, classes=CLASSES.split(","), limit=1, report=False)
    weight = next(bare.backbones.dino.parameters())
    kept = weight.detach().view(-1)[0].clone()
    with torch.no_grad():
        weight.view(-1)[0] += 1.0  # another checkpoint, in effect
        try:
            with pytest.raises(DatasetError, match="run.json records other model.weights_sha256"):
                lposs.segment_folder(bare, photos, bare_out, classes=CLASSES.split(","), resume=True, report=False)
        finally:
            weight.view(-1)[0] = kept
    again = lposs.segment_folder(bare, photos, bare_out, classes=CLASSES.split(","), resume=True, report=False)
    assert (again.segmented, again.complete_before) == (2, 1)


def test_resume_redoes_changed_images_and_outputs_that_are_not_whole(photos, reference, tmp_path, capsys):
    predictor, labels, _ = reference
    shutil.copytree(photos, tmp_path / "photos")
    photos, out = tmp_path / "photos", tmp_path / "out"
    assert run(folder_args(photos, out)) == 0
    # y.png changes under its name (same size in bytes or not: its modification time moves), x2's label map is
    # left empty by a crash; x1 is untouched
    Image.fromarray(np.ascontiguousarray(np.rot90(quadrants(48, 48)))).save(photos / "y.png")
    changed = predictor.predict_scores(photos / "y.png").numpy().argmax(0)
    assert len(np.unique(changed)) >= 2 and (changed != labels["y.png"]).any()  # the new map varies and differs
    (out / "labels" / "a" / "b" / "x2.png").write_bytes(b"")
    capsys.readouterr()
    assert run(folder_args(photos, out, "--resume")) == 0
    printed = capsys.readouterr()
    assert "4 images: 2 segmented, 1 already complete (--resume), 1 skipped" in printed.out
    assert f"--resume: 1 image(s) changed since {out}/run.json was written" in printed.err
    assert "first: y.png" in printed.err
    assert_labels_equal(out, labels | {"y.png": changed})
    # a label map cut short (a crash mid-write without fsync) is redone; then nothing is left to do
    x1 = out / "labels" / "a" / "x1.png"
    x1.write_bytes(x1.read_bytes()[: x1.stat().st_size // 2])
    assert run(folder_args(photos, out, "--resume")) == 0
    assert "4 images: 1 segmented, 2 already complete (--resume), 1 skipped" in capsys.readouterr().out
    assert_labels_equal(out, labels | {"y.png": changed})
    assert run(folder_args(photos, out, "--resume")) == 0
    assert "4 images: 0 segmented, 3 already complete (--resume), 1 skipped" in capsys.readouterr().out


def test_resume_after_sigkill_completes_the_rest_without_redoing_finished_images(photos, reference, tmp_path, capsys):
    out = tmp_path / "out"

    def killed_at_the_second_label_map():
        renames, real = [], os.replace

        def replace(src, dst):  # the temporary file is written; SIGKILL instead of its rename into place
            renames.append(dst) if "/labels/" in str(dst) else None
            if len(renames) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)

        os.replace = replace
        return run(folder_args(photos, out, "--image_batch", "1"))

    log = tmp_path / "killed.log"
    assert exit_codes([forked(killed_at_the_second_label_map, log)]) == [-signal.SIGKILL], log.read_text()
    finished = {path: state for path, state in outputs_of(out).items() if not path.name.startswith(".")}
    assert sorted(p.relative_to(out).as_posix() for p in finished) == ["labels/a/b/x2.png"]
    temporary = [p.name for p in (out / "labels" / "a").iterdir() if p.name.startswith(".x1.png.")]
    assert len(temporary) == 1 and temporary[0].endswith(".tmp")  # whole files or temporaries, never half a file
    assert beside(out) == [".out.lock"]
    assert run(folder_args(photos, out, "--resume")) == 0
    printed = capsys.readouterr()
    assert "4 images: 2 segmented, 1 already complete (--resume), 1 skipped" in printed.out
    assert f"took over the lock of {out} left by PID" in printed.err
    assert {p: v for p, v in outputs_of(out).items() if p in finished} == finished  # not redone, not rewritten
    assert not list(out.rglob(".*")) and beside(out) == []
    assert_labels_equal(out, reference[1])


def test_an_image_with_non_finite_scores_is_skipped_and_the_run_goes_on(
    photos, reference, tmp_path, capsys, monkeypatch
):
    real = Segmentor.encode_batch

    def nan_for_x1(self, images, sizes):  # a degenerate window (ProxyCLIP's all -inf row) in one image
        encodings = real(self, images, sizes)
        for encoding in encodings:
            if encoding.original_size == IMAGES["a/x1.jpg"]:
                encoding.scores[0, 0, 0, 0] = float("nan")
        return encodings

    monkeypatch.setattr(Segmentor, "encode_batch", nan_for_x1)
    out = tmp_path / "out"
    assert run(folder_args(photos, out)) == 0
    printed = capsys.readouterr()
    assert "4 images: 2 segmented, 2 skipped" in printed.out
    assert f"skipped: {photos}/a/x1.jpg: the model gave NaN or infinite scores" in printed.err
    skipped = (out / "skipped.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in skipped] == ["a/x1.jpg", "broken.jpg"]
    assert read_labels(out)["files"] == ["a/b/x2.png", "y.png"]


def test_evaluation_outputs_into_existing_empty_folders(tmp_path):
    make_dataset(tmp_path, "voc")
    out, pred = tmp_path / "out", tmp_path / "pred"
    out.mkdir(), pred.mkdir()
    args = ["maskclip.yaml", "--dataset", "voc", f"data_root={tmp_path}", *SMALL, *TINY_TEXT]
    assert run([*args, "--output", str(out), "--save_predictions", str(pred)]) == 0
    assert (out / "results.json").is_file() and list(pred.rglob("*.png"))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--images", "p", "--save_predictions", "o"], "--images needs --classes"),
        (["--images", "p", "--classes", "a"], "--images needs --save_predictions"),
        (
            ["--images", "p", "--classes", "a", "--save_predictions", "o", "--dataset", "voc"],
            "--dataset does not apply",
        ),
        (["--images", "p", "--classes", "a", "--save_predictions", "o", "--output", "r"], "--output does not apply"),
        (["--images", "p", "--classes", "a", "--save_predictions", "o", "--sweep", "k=1,2"], "--sweep does not apply"),
        (["--dataset", "voc", "--classes", "a"], "--classes goes with --images"),
        (["--dataset", "voc", "--save_scores"], "--save_scores goes with --images"),
    ],
)
def test_the_flags_of_the_folder_mode_go_together(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main_eval.parse_args(["lposs_plus.yaml", *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
