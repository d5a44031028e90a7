"""Datasets described by one YAML file (lposs/datasets/custom.py, labels.py, user_dataset.py): every layout, every
bad input in one line naming the file, the docs' worked example, and a copy of VOC that gives VOC's numbers."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from fake_datasets import USER_NAMES, USER_SHAPES, expected_label, make_user_dataset
from mmseg.core.evaluation import mean_iou
from PIL import Image
from test_main_eval import (  # noqa: F401 (shared_backbones: the autouse fixture)
    SMALL,
    TINY,
    TINY_TEXT,
    VOC_MINI,
    assert_one_line_error,
    needs_voc,
    refuse_model_loading,
    run,
    shared_backbones,
    snapshot,
)

from lposs.datasets import DatasetError, build_dataset, class_names, load_image, load_label, resolve_keys, stray_labels

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = '["sky;cloud", tree, road]'
BASE = f"name: mydata\nimages: images\nlabels: labels\nclasses: {CLASSES}\n"
SORTED = sorted(USER_NAMES)  # the listing order without a split file


def mmseg_convert_from_color(rgb, palette):
    """mmsegmentation's colour-label converter (tools/dataset_converters/isaid.py, iSAID_convert_from_color)."""
    out = np.zeros(rgb.shape[:2], dtype=np.uint8)
    for value, colour in palette.items():
        out[np.all(rgb == np.array(colour).reshape(1, 1, 3), axis=2)] = value
    return out


def labels_of(path, root="."):
    dataset = build_dataset(str(path), root)
    names = [info["filename"][: -len(".jpg")] for info in dataset.img_infos]
    labels = {}
    for idx, name in enumerate(names):
        image, _ = load_image(dataset, idx)
        assert image.shape[:2] == USER_SHAPES[name]
        labels[name] = load_label(dataset, idx, image.shape)
    return dataset, names, labels


def test_nested_folders_aliases_and_a_class_file(tmp_path):
    (tmp_path / "classes.txt").write_text("sky ; cloud\ntree\nroad\n\n")  # spaces and a trailing empty line
    path, raw = make_user_dataset(tmp_path, BASE.replace(CLASSES, "classes.txt"), values=(0, 3))
    dataset, names, labels = labels_of(path)
    assert names == SORTED and len(dataset) == 2  # found in the sub-folders, in path order
    assert class_names(str(path)) == class_names("mydata") == ["sky;cloud", "tree", "road"]
    assert class_names("mydata", aliases=False) == list(dataset.CLASSES) == ["sky", "tree", "road"]
    for name in names:
        assert labels[name].dtype == np.int64
        np.testing.assert_array_equal(labels[name], raw[name])  # stored values: classes 0..2, 255 ignored


def test_split_file_relative_to_data_root_and_reduce_zero_label(tmp_path):
    text = BASE.replace("images: images", "relative_to: data_root\nsplit: lists/val.txt\nimages: images")
    (tmp_path / "lists").mkdir()
    path, raw = make_user_dataset(tmp_path, text + "reduce_zero_label: true\n", values=(0, 4), split="lists/val.txt")
    shutil.move(path, tmp_path / "lists" / "mydata.yaml")  # the folders are found from data_root, not the file
    _, names, labels = labels_of(tmp_path / "lists" / "mydata.yaml", tmp_path)
    assert names == list(USER_NAMES)  # the split file's order
    for name in names:
        np.testing.assert_array_equal(labels[name], expected_label(raw[name], reduce_zero_label=True))


def test_palette_labels_are_converted_as_mmseg_does(tmp_path):
    palette = {0: (0, 0, 0), 1: (70, 130, 180), 2: (34, 139, 34), 255: (224, 224, 192)}
    text = BASE + "palette: {0: [0, 0, 0], 1: [70, 130, 180], 2: [34, 139, 34], 255: [224, 224, 192]}\n"
    path, raw = make_user_dataset(tmp_path, text, values=(0, 3), palette=palette)
    label_file = tmp_path / "labels" / f"{SORTED[0]}.png"
    rgb = np.array(Image.open(label_file))
    rgb[10:12, 20:23] = (1, 2, 3)  # a colour of no class: stray, where mmseg's converter would say class 0
    Image.fromarray(rgb).save(label_file)
    dataset, names, labels = labels_of(path)
    assert dataset.PALETTE == [[0, 0, 0], [70, 130, 180], [34, 139, 34]]  # the class colours, for the outputs
    reference = mmseg_convert_from_color(rgb, palette)
    stray = np.zeros(rgb.shape[:2], bool)
    stray[10:12, 20:23] = True
    np.testing.assert_array_equal(labels[SORTED[0]][~stray], reference[~stray])
    np.testing.assert_array_equal(labels[SORTED[1]], raw[SORTED[1]])
    report = stray_labels(dataset, 0, labels[SORTED[0]])
    assert report["pixels"] == 6 and report["values"] == ["colour (1, 2, 3)"] and report["file"] == str(label_file)


def test_other_ignore_index_and_stray_values(tmp_path):
    path, raw = make_user_dataset(tmp_path, BASE + "ignore_index: 4\n", values=(0, 6))
    dataset, names, labels = labels_of(path)
    for idx, name in enumerate(names):
        # 0..2 classes, 4 ignored (-> 255, the run's ignored value), 3 and 5 strays; 255 is not ignored here: a stray
        values = raw[name].astype(np.int64)
        expected = np.where(values == 4, 255, np.where(values == 255, 256, values))
        np.testing.assert_array_equal(labels[name], expected)
        assert stray_labels(dataset, idx, labels[name])["values"] == ["3", "5", "256"]


def test_palette_pngs_give_their_indices_and_agree_with_the_palette_key(tmp_path):
    """A palette PNG's indices are its label values; a palette key that gives each value the file's own colour of
    that index is accepted (the refusal of one that does not: BAD_INPUTS)."""
    path, raw = make_user_dataset(tmp_path, BASE + "palette: [[0, 0, 0], [128, 0, 0], [0, 128, 0]]\n")
    for name in SORTED:
        palette_label(tmp_path, name, [[0, 0, 0], RED, GREEN, *[[9, 9, 9]] * 253])
    dataset, names, labels = labels_of(path)
    assert Image.open(tmp_path / "labels" / f"{names[0]}.png").mode == "P"
    for name in names:
        np.testing.assert_array_equal(labels[name], raw[name])


def test_negative_label_values_are_reported_as_numbers(tmp_path):
    path, raw = make_user_dataset(tmp_path, BASE.replace("labels: labels", "labels: labels\nlabel_suffix: .tif"))
    for name, values in raw.items():
        signed = values.astype(np.float32)
        signed[5:7, 8:11] = -1.0
        Image.fromarray(signed).save(tmp_path / "labels" / f"{name}.tif")
    dataset, names, labels = labels_of(path)
    report = stray_labels(dataset, 0, labels[names[0]])
    assert report["pixels"] == 6 and report["values"] == ["-1"]


def test_resume_recomputes_a_result_whose_dataset_file_changed(tmp_path):
    """results.json records the dataset file's resolved content; --resume keeps a result only while the file's keys,
    classes and image list are as recorded, and the log names what changed."""
    path, _ = make_user_dataset(tmp_path, BASE)
    out = tmp_path / "out"
    args = ["maskclip.yaml", "--dataset", str(path), "--output", str(out), *SMALL, *TINY]
    assert run(args) == 0
    results = out / "results.json"
    recorded = json.loads(results.read_text())["dataset_file"]
    assert recorded["classes"] == ["sky;cloud", "tree", "road"] and recorded["images"]["count"] == 2
    assert recorded["keys"]["reduce_zero_label"] is False and recorded["file"] == str(path)
    first = results.read_bytes()
    assert run([*args, "--resume"]) == 0
    assert results.read_bytes() == first and "--resume: mydata is complete, skipped" in (out / "eval.log").read_text()
    _yaml(tmp_path, "road]", "street]\nreduce_zero_label: true\nsplit: val.txt")  # classes, a key, the images
    (tmp_path / "val.txt").write_text(f"{SORTED[0]}\n")
    assert run([*args, "--resume"]) == 0
    record = json.loads(results.read_text())
    assert list(record["IoU"]) == ["sky", "tree", "street"] and record["num_images"] == 1
    assert record["dataset_file"]["keys"]["reduce_zero_label"] is True
    line = next(line for line in (out / "eval.log").read_text().splitlines() if "is recomputed" in line)
    assert line == (
        f"--resume: mydata is recomputed: the dataset file {path} changed: "
        'split null -> "val.txt"; reduce_zero_label false -> true; '
        'classes ["sky;cloud", "tree", "road"] -> ["sky;cloud", "tree", "street"]; the image list (2 -> 1 images)'
    )


def test_a_name_in_the_user_folder(tmp_path, monkeypatch):
    text = BASE.replace("name: mydata", "name: shelf").replace(": images", f": {tmp_path}/images")
    path, _ = make_user_dataset(tmp_path, text.replace(": labels", f": {tmp_path}/labels"))  # absolute folders
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "shelf.yaml").write_text(path.read_text())
    monkeypatch.setenv("LPOSS_DATASETS", str(folder))
    assert resolve_keys(["voc", "shelf", "voc"]) == ["voc", "shelf"]
    assert len(build_dataset("shelf", ".")) == 2
    other = tmp_path / "other.yaml"
    other.write_text(path.read_text())
    with pytest.raises(DatasetError, match=r"two dataset files are named 'shelf'"):
        resolve_keys([str(path), str(other)])


def bad_label(root, name, array):
    Image.fromarray(array).save(root / "labels" / f"{name}.png")


RED, GREEN = [128, 0, 0], [0, 128, 0]


def palette_label(root, name, colours):
    """The label of ``name`` saved again as a palette PNG (same indices) whose index i has ``colours[i]``."""
    path = root / "labels" / f"{name}.png"
    image = Image.fromarray(np.array(Image.open(path)), mode="P")
    image.putpalette([c for colour in colours for c in colour])
    image.save(path)


def edit_bytes(path, old, new):
    path.write_bytes(path.read_bytes().replace(old, new))


# Each bad input: (what the test changes, fragments of the one line; "{x}" is filled in with tmp_path).
BAD_INPUTS = {
    "missing label": (
        lambda root: (root / "labels/site_a/0001.png").unlink(),
        ["label not found for image {x}/images/site_a/0001.jpg", "expected {x}/labels/site_a/0001.png"],
    ),
    "size mismatch": (
        lambda root: bad_label(root, "site_b/0002", np.zeros((10, 12), np.uint8)),
        ["label {x}/labels/site_b/0002.png is 10x12", "{x}/images/site_b/0002.jpg is 64x40"],
    ),
    "RGB label": (
        lambda root: bad_label(root, "site_a/0001", np.zeros((37, 53, 3), np.uint8)),
        ["label {x}/labels/site_a/0001.png is an RGB image", "palette"],
    ),
    "two-channel label": (
        lambda root: Image.new("LA", (53, 37)).save(root / "labels/site_a/0001.png"),
        ["label {x}/labels/site_a/0001.png has image mode LA"],
    ),
    "empty class list": (lambda root: _yaml(root, CLASSES, "[]"), ["{x}/mydata.yaml", "class list is empty"]),
    "duplicate names": (
        lambda root: _yaml(root, CLASSES, "[sky, 'tree;Sky']"),
        ["{x}/mydata.yaml", "'Sky' is given twice"],
    ),
    "empty name in a class file": (
        lambda root: (_yaml(root, CLASSES, "names.txt"), (root / "names.txt").write_text("sky\n\nroad\n")),
        ["class file {x}/names.txt", "class 2 ('') has an empty name"],
    ),
    "ignore index is a class": (
        lambda root: _yaml(root, "classes:", "ignore_index: 2\nclasses:"),
        ["{x}/mydata.yaml", "ignore_index 2 is a class", "0..2"],
    ),
    "unknown key": (lambda root: _yaml(root, "labels:", "labls:"), ["{x}/mydata.yaml", "unknown key 'labls'"]),
    "a benchmark's name": (lambda root: _yaml(root, "name: mydata", "name: voc"), ["{x}/mydata.yaml", "benchmark"]),
    "a key given twice": (
        lambda root: _yaml(root, "labels: labels", "labels: labels\nlabels: masks"),
        ["{x}/mydata.yaml", "key 'labels' is given twice (lines 3 and 4)"],
    ),
    "a palette value given twice": (
        lambda root: _yaml(root, "classes:", "palette: {0: [0, 0, 0], 0: [1, 1, 1], 1: [2, 2, 2]}\nclasses:"),
        ["{x}/mydata.yaml", "key 0 is given twice (line 4)"],
    ),
    "a dataset file not in UTF-8": (
        lambda root: edit_bytes(root / "mydata.yaml", b"classes:", b"# caf\xe9\nclasses:"),
        ["dataset file {x}/mydata.yaml: not UTF-8 text (byte 0xe9 on line 4)"],
    ),
    "a class file not in UTF-8": (
        lambda root: (_yaml(root, CLASSES, "names.txt"), (root / "names.txt").write_bytes(b"sky\ntr\xe9e\nroad\n")),
        ["class file {x}/names.txt: not UTF-8 text (byte 0xe9 on line 2)"],
    ),
    "a split file not in UTF-8": (
        lambda root: (
            _yaml(root, "classes:", "split: val.txt\nclasses:"),
            (root / "val.txt").write_bytes(b"a\n\xff\n"),
        ),
        ["split file {x}/val.txt: not UTF-8 text (byte 0xff on line 2)"],
    ),
    "a palette PNG whose colours disagree with the palette key": (
        lambda root: (
            _yaml(root, "classes:", "palette: [[0, 0, 0], [0, 128, 0], [128, 0, 0]]\nclasses:"),
            palette_label(root, "site_a/0001", [[0, 0, 0], RED, GREEN]),
        ),
        [
            "label {x}/labels/site_a/0001.png is a palette image whose index 1 has colour [128, 0, 0]",
            "the dataset file's palette gives label value 1 the colour [0, 128, 0]",
        ],
    ),
    "split lists a missing image": (
        lambda root: (_yaml(root, "classes:", "split: val.txt\nclasses:"), (root / "val.txt").write_text("site_c/9\n")),
        ["image not found: {x}/images/site_c/9.jpg"],
    ),
}


def _yaml(root, old, new):
    path = root / "mydata.yaml"
    path.write_text(path.read_text().replace(old, new))


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_each_bad_input_is_one_line_naming_the_file_before_weights_load(tmp_path, capsys, monkeypatch, case):
    change, fragments = BAD_INPUTS[case]
    path, _ = make_user_dataset(tmp_path, BASE)
    change(tmp_path)
    refuse_model_loading(monkeypatch)
    code = run(["maskclip.yaml", "--dataset", f"voc,{path}", f"data_root={VOC_MINI}", *TINY])
    assert_one_line_error(capsys, code, *(fragment.format(x=tmp_path) for fragment in fragments))


def test_a_label_only_a_full_read_can_judge_stops_the_run_with_earlier_results_untouched(tmp_path, capsys):
    text = BASE.replace("labels: labels", "labels: labels\nlabel_suffix: .tif")
    path, raw = make_user_dataset(tmp_path, text, values=(0, 3))
    for name, values in raw.items():  # float TIFFs of whole numbers are labels like any other
        Image.fromarray(values.astype(np.float32)).save(tmp_path / "labels" / f"{name}.tif")
        (tmp_path / "labels" / f"{name}.png").unlink()
    out = tmp_path / "out"
    args = ["lposs.yaml", "--dataset", str(path), "--output", str(out), "--sweep", "k=5,7", *SMALL, *TINY]
    assert run(args) == 0  # a sweep over a dataset file, as over a benchmark
    for setting in ("k=5", "k=7"):
        record = json.loads((out / setting / "mydata" / "results.json").read_text())
        assert record["dataset"] == "mydata" and record["num_images"] == 2
        assert list(record["IoU"]) == ["sky", "tree", "road"] and record["config"]["k"] == int(setting[2:])
    before = snapshot(out)
    fractional = raw[SORTED[0]].astype(np.float32)
    fractional[5, 7] = 1.5
    Image.fromarray(fractional).save(tmp_path / "labels" / f"{SORTED[0]}.tif")
    assert_one_line_error(
        capsys,
        run([*args, "alpha=0.9"]),
        f"label {tmp_path}/labels/{SORTED[0]}.tif holds non-integer values (e.g. 1.5)",
    )
    assert snapshot(out) == before


def docs_example():
    """The worked example of docs/datasets.md: its dataset file, class file, split file and command."""
    page = (REPO_ROOT / "docs" / "datasets.md").read_text()
    section = page[page.index("### A worked example") : page.index("### The dataset file")]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, flags=re.S)
    yaml_text = next(body for kind, body in blocks if kind == "yaml")
    classes, split = [body for kind, body in blocks if kind == "text"]
    command = next(body for kind, body in blocks if kind == "bash").split()
    return yaml_text, classes, split, command


def test_the_worked_example_of_the_docs(tmp_path, monkeypatch):
    yaml_text, classes, split, command = docs_example()
    root = tmp_path / "mydata"
    root.mkdir()
    (root / "classes.txt").write_text(classes)
    (root / "val.txt").write_text(split)
    _, raw = make_user_dataset(root, yaml_text, values=(0, 4))  # 0 unlabelled, 1..3 the classes, 255 ignored
    assert command[:2] == ["python", "main_eval.py"]
    monkeypatch.chdir(tmp_path)
    # the 3-block tiny CLIP: label maps of 1 and 3 labels here (ViT-S-16's are constant, and equal any other)
    assert run([*command[2:], "--save_predictions", "pred", "--save_visualisations", "1", *SMALL, *TINY_TEXT]) == 0
    out = Path(command[command.index("--output") + 1])
    overlays = [p.relative_to(out / "visualisations").as_posix() for p in (out / "visualisations").rglob("*.png")]
    assert overlays == ["site_b/0002.png"]  # the first image of the split, in its sub-folder as its prediction
    record = json.loads((out / "results.json").read_text())
    assert list(record["IoU"]) == ["sky", "tree", "road"] and record["boundary_mIoU"] is not None
    assert json.loads((out / "summary.json").read_text())["datasets"] == ["mydata"]
    # the metrics equal mmseg's mean_iou of the saved label maps against the labels as the docs define them
    preds = [np.array(Image.open(Path("pred", f"{name}.png"))).astype(np.int64) for name in USER_NAMES]
    assert max(len(np.unique(pred)) for pred in preds) >= 2  # maps that vary: the comparison can fail
    labels = [expected_label(raw[name], reduce_zero_label=True) for name in USER_NAMES]
    reference = mean_iou(preds, labels, num_classes=3, ignore_index=255)
    ours = np.array([np.nan if v is None else v / 100 for v in record["IoU"].values()])
    np.testing.assert_allclose(ours, reference["IoU"], rtol=1e-12, equal_nan=True)


@needs_voc
def test_a_copy_of_voc_gives_the_voc_numbers_and_label_maps(tmp_path, capsys):
    """The VOC development images and labels copied into a folder of one's own, with VOC's class prompts, give
    exactly the numbers and maps of the ``voc`` key; a dataset file over the very same files shares its pass."""
    voc = build_dataset("voc", VOC_MINI)
    copy = tmp_path / "myvoc"
    for info in voc.img_infos:
        for folder, name in ((voc.img_dir, info["filename"]), (voc.ann_dir, info["ann"]["seg_map"])):
            target = copy / ("images" if folder == voc.img_dir else "labels") / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(folder) / name, target)
    (copy / "classes.txt").write_text("".join(f"{name}\n" for name in class_names("voc")))
    (copy / "myvoc.yaml").write_text("name: myvoc\nimages: images\nlabels: labels\nclasses: classes.txt\n")
    same = tmp_path / "vocsame.yaml"  # the benchmark's own files, found from data_root
    voc_folder = "VOCdevkit/VOC2012"
    same.write_text(
        f"name: vocsame\nrelative_to: data_root\nimages: {voc_folder}/JPEGImages\nlabels: {voc_folder}/SegmentationClass\n"
        f"split: {voc_folder}/ImageSets/Segmentation/val.txt\nclasses: {copy}/classes.txt\n"
    )
    out, pred = tmp_path / "out", tmp_path / "pred"
    keys = f"voc,{copy / 'myvoc.yaml'},{same}"
    common = ["--output", str(out), "--save_predictions", str(pred), f"data_root={VOC_MINI}", *SMALL]
    # MaskCLIP on the 3-block tiny CLIP: label maps of 2 and 7 labels (LPOSS+ on random weights gives one class
    # everywhere on these images, and a constant map equals any other); the datasets' images are the same either way
    assert run(["maskclip.yaml", "--dataset", keys, "--measure_boundary", *common, *TINY_TEXT]) == 0
    assert "one pass shared by voc, vocsame" in capsys.readouterr().out
    records = {key: json.loads((out / key / "results.json").read_text()) for key in ("voc", "myvoc", "vocsame")}
    for key in ("myvoc", "vocsame"):
        for metric in ("mIoU", "boundary_mIoU", "aAcc", "num_images"):
            assert records[key][metric] == records["voc"][metric], (key, metric)
        assert list(records[key]["IoU"].values()) == list(records["voc"]["IoU"].values())
        assert list(records[key]["boundary_IoU"].values()) == list(records["voc"]["boundary_IoU"].values())
    assert records["voc"]["mIoU"] > 0
    maps = sorted((pred / "voc").glob("*.png"))
    assert len(maps) == len(voc) == 2
    assert [len(np.unique(np.array(Image.open(path)))) >= 2 for path in maps] == [True, True]  # maps that vary
    for path in maps:
        for key in ("myvoc", "vocsame"):
            np.testing.assert_array_equal(np.array(Image.open(path)), np.array(Image.open(pred / key / path.name)))
