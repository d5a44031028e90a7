"""Label converters in tools/ on hand-made raw label maps, against independent tables."""

import ast
import importlib.util
import json
import sys
import types
from pathlib import Path

import mmseg
import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from lposs.datasets import build_dataset, class_names, load_label
from lposs.datasets.label_conversion import remap_label, write_png_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]
MMSEG_TOOLS = Path(mmseg.__file__).resolve().parent / ".mim" / "tools" / "convert_datasets"

# COCO's official category ids of the 80 thing classes (instances_val2017.json), in order.
COCO_THING_CATEGORY_IDS = [
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    27,
    28,
    31,
    32,
    33,
    34,
    35,
    36,
    37,
    38,
    39,
    40,
    41,
    42,
    43,
    44,
    46,
    47,
    48,
    49,
    50,
    51,
    52,
    53,
    54,
    55,
    56,
    57,
    58,
    59,
    60,
    61,
    62,
    63,
    64,
    65,
    67,
    70,
    72,
    73,
    74,
    75,
    76,
    77,
    78,
    79,
    80,
    81,
    82,
    84,
    85,
    86,
    87,
    88,
    89,
    90,
]
COCO_STUFF_CATEGORY_IDS = list(range(92, 183))  # 91 stuff classes, 'banner' .. 'wood'

# cityscapesscripts/helpers/labels.py: (name, id, trainId); trainId 255 or -1 = ignored.
CITYSCAPES_LABELS = [
    ("unlabeled", 0, 255),
    ("ego vehicle", 1, 255),
    ("rectification border", 2, 255),
    ("out of roi", 3, 255),
    ("static", 4, 255),
    ("dynamic", 5, 255),
    ("ground", 6, 255),
    ("road", 7, 0),
    ("sidewalk", 8, 1),
    ("parking", 9, 255),
    ("rail track", 10, 255),
    ("building", 11, 2),
    ("wall", 12, 3),
    ("fence", 13, 4),
    ("guard rail", 14, 255),
    ("bridge", 15, 255),
    ("tunnel", 16, 255),
    ("pole", 17, 5),
    ("polegroup", 18, 255),
    ("traffic light", 19, 6),
    ("traffic sign", 20, 7),
    ("vegetation", 21, 8),
    ("terrain", 22, 9),
    ("sky", 23, 10),
    ("person", 24, 11),
    ("rider", 25, 12),
    ("car", 26, 13),
    ("truck", 27, 14),
    ("bus", 28, 15),
    ("caravan", 29, 255),
    ("trailer", 30, 255),
    ("train", 31, 16),
    ("motorcycle", 32, 17),
    ("bicycle", 33, 18),
    ("license plate", -1, -1),
]

# PASCAL Context labels.txt ids (459-class release) of some of the 59 benchmark classes.
CONTEXT_IDS = {
    2: "aeroplane",
    9: "bag",
    18: "bed",
    25: "bird",
    44: "building",
    59: "car",
    65: "cat",
    72: "chair",
    113: "dog",
    115: "door",
}


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(name, argv):
    module = load_tool(name)
    return module.main(module.parse_args([str(a) for a in argv]))


def mmseg_literal(filename, variable):
    """A literal (dict or list) assigned to ``variable`` in one of mmseg's converter scripts."""
    path = MMSEG_TOOLS / filename
    if not path.is_file():
        pytest.skip(f"mmseg converter source not installed: {path}")
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and node.targets[0].id == variable:
            literal = next(n for n in ast.walk(node.value) if isinstance(n, (ast.Dict, ast.List)))
            return ast.literal_eval(literal)
    raise AssertionError(f"{variable} not found in {path}")


def all_raw_coco_ids():
    return np.array([c - 1 for c in COCO_THING_CATEGORY_IDS + COCO_STUFF_CATEGORY_IDS] + [255], np.uint8)


def write_raw_coco(tmp_path, raw):
    ann_dir = tmp_path / "annotations" / "val2017"
    ann_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(raw).save(ann_dir / "000000000139.png")
    return ann_dir


def raw_coco_map():
    ids = all_raw_coco_ids()  # 172 values
    return np.concatenate([ids, ids[::-1]]).reshape(8, 43)  # non-square


def test_coco_object(tmp_path):
    raw = raw_coco_map()
    ann_dir = write_raw_coco(tmp_path, raw)
    assert run_tool("convert_coco_object", [tmp_path]) == 0
    out = np.array(Image.open(ann_dir / "000000000139_instanceTrainIds.png"))
    expected_of = {cid - 1: i + 1 for i, cid in enumerate(COCO_THING_CATEGORY_IDS)}  # things -> 1..80
    expected_of.update({cid - 1: 0 for cid in COCO_STUFF_CATEGORY_IDS})  # stuff -> background
    expected_of[255] = 0  # reference quirk: unlabelled -> background, not ignored
    expected = np.vectorize(expected_of.__getitem__)(raw)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8 and set(np.unique(out)) == set(range(81))
    assert sorted(p.name for p in ann_dir.iterdir()) == ["000000000139.png", "000000000139_instanceTrainIds.png"]


def test_coco_stuff_matches_mmseg_table(tmp_path):
    raw = raw_coco_map()
    ann_dir = write_raw_coco(tmp_path, raw)
    assert run_tool("convert_coco_stuff", [tmp_path]) == 0
    out = np.array(Image.open(ann_dir / "000000000139_labelTrainIds.png"))
    mmseg_table = mmseg_literal("coco_stuff164k.py", "clsID_to_trID")
    np.testing.assert_array_equal(out, np.vectorize(mmseg_table.__getitem__)(raw))
    official = {cid - 1: i for i, cid in enumerate(COCO_THING_CATEGORY_IDS + COCO_STUFF_CATEGORY_IDS)}
    assert mmseg_table == {**official, 255: 255}


def test_coco_converted_labels_load_as_datasets(tmp_path):
    raw = raw_coco_map()
    write_raw_coco(tmp_path / "coco_stuff164k", raw)
    image_dir = tmp_path / "coco_stuff164k" / "images" / "val2017"
    image_dir.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 43, 3), np.uint8)).save(image_dir / "000000000139.jpg")
    assert run_tool("convert_coco_object", [tmp_path / "coco_stuff164k"]) == 0
    assert run_tool("convert_coco_stuff", [tmp_path / "coco_stuff164k"]) == 0
    obj = load_label(build_dataset("coco_object", tmp_path), 0)
    stuff = load_label(build_dataset("coco_stuff", tmp_path), 0)
    thing = stuff < 80
    np.testing.assert_array_equal(obj[thing], stuff[thing] + 1)
    assert np.all(obj[~thing] == 0)
    assert class_names("coco_object")[obj[0, 0]] == class_names("coco_stuff")[stuff[0, 0]] == "person"


def test_coco_unexpected_id_is_an_error(tmp_path, capsys):
    raw = raw_coco_map()
    raw[0, 0] = 11  # COCO category id 12 does not exist
    ann_dir = write_raw_coco(tmp_path, raw)
    assert run_tool("convert_coco_object", [tmp_path]) == 1
    assert "000000000139.png: unexpected label ids [11]" in capsys.readouterr().err
    assert not list(ann_dir.glob("*TrainIds*")) and not list(ann_dir.glob(".*"))
    assert run_tool("convert_coco_stuff", [tmp_path / "missing"]) == 1
    assert "annotations/val2017" in capsys.readouterr().err


def test_cityscapes_numpy_fallback(tmp_path):
    ids = np.array([label_id for _, label_id, _ in CITYSCAPES_LABELS if label_id >= 0], np.uint8)
    raw = np.concatenate([ids, ids[::-1], ids[:2]]).reshape(10, 7)
    city_dir = tmp_path / "gtFine" / "val" / "frankfurt"
    city_dir.mkdir(parents=True)
    Image.fromarray(raw).save(city_dir / "frankfurt_000000_000294_gtFine_labelIds.png")
    assert run_tool("convert_cityscapes", [tmp_path, "--method", "numpy"]) == 0
    out = np.array(Image.open(city_dir / "frankfurt_000000_000294_gtFine_labelTrainIds.png"))
    train_id = {label_id: (255 if t < 0 else t) for _, label_id, t in CITYSCAPES_LABELS}
    np.testing.assert_array_equal(out, np.vectorize(train_id.__getitem__)(raw))
    names = class_names("cityscapes")
    assert [names[train_id[i]] for i in (7, 26, 33)] == ["road", "car", "bicycle"]


def test_pascal_context_from_mat(tmp_path):
    voc2010 = tmp_path / "VOCdevkit" / "VOC2010"
    (voc2010 / "ImageSets" / "Main").mkdir(parents=True)
    (voc2010 / "JPEGImages").mkdir()
    (voc2010 / "ImageSets" / "Main" / "train.txt").write_text("2008_000002\n")
    (voc2010 / "ImageSets" / "Main" / "val.txt").write_text("2008_000009\n2008_000003\n2008_000010\n")
    mat_dir = tmp_path / "trainval"
    mat_dir.mkdir()
    kept = mmseg_literal("pascal_context.py", "_mapping")  # 0 and the 59 kept ids
    rng = np.random.default_rng(0)
    raws = {}
    for name in ("2008_000002", "2008_000003", "2008_000009"):  # 2008_000010 has no .mat
        raws[name] = rng.choice(np.array(kept + [1, 3, 300, 459]), size=(9, 13)).astype(np.uint16)
        savemat(mat_dir / f"{name}.mat", {"LabelMap": raws[name]})
        Image.fromarray(np.zeros((9, 13, 3), np.uint8)).save(voc2010 / "JPEGImages" / f"{name}.jpg")
    assert run_tool("convert_pascal_context", [tmp_path / "VOCdevkit", "--mat-dir", mat_dir]) == 0
    split_dir = voc2010 / "ImageSets" / "SegmentationContext"
    assert (split_dir / "val.txt").read_text() == "2008_000003\n2008_000009\n"
    assert (split_dir / "train.txt").read_text() == "2008_000002\n"
    sorted_kept = np.sort(kept)
    for name, raw in raws.items():
        out = np.array(Image.open(voc2010 / "SegmentationClassContext" / f"{name}.png"))
        index = np.searchsorted(sorted_kept, raw)  # mmseg's np.digitize(..., right=True) on kept ids
        hit = np.isin(raw, sorted_kept)
        np.testing.assert_array_equal(out, np.where(hit, index, 0))
    names = class_names("context")
    lut_names = {i: names[int(np.searchsorted(sorted_kept, i))] for i in CONTEXT_IDS}
    assert lut_names == CONTEXT_IDS
    dataset = build_dataset("context59", tmp_path)
    raw = raws[dataset.img_infos[0]["filename"][:-4]]
    expected59 = np.where(np.isin(raw, sorted_kept[1:]), np.searchsorted(sorted_kept, raw) - 1, 255)
    np.testing.assert_array_equal(load_label(dataset, 0), expected59)


class FakeDetail:
    """Stands in for the Detail API (``detail.Detail``, not on PyPI): images and masks from a small JSON file."""

    def __init__(self, json_path, img_dir, split):
        self.masks = json.loads(Path(json_path).read_text())[split]  # {image stem: raw 459-class id rows}

    def getImgs(self):  # noqa: N802 (the Detail API's name)
        return [{"file_name": f"{stem}.jpg", "image_id": i} for i, stem in enumerate(self.masks)]

    def getMask(self, img):  # noqa: N802
        return np.array(self.masks[img["file_name"][:-4]], dtype=np.int64)


def test_pascal_context_json_equals_mmseg_converter(tmp_path, monkeypatch):
    # Both converters run on the same fake Detail API: ours through the tool, mmseg's own script unchanged.
    path = MMSEG_TOOLS / "pascal_context.py"
    if not path.is_file():
        pytest.skip(f"mmseg converter source not installed: {path}")
    monkeypatch.setitem(sys.modules, "detail", types.SimpleNamespace(Detail=FakeDetail))
    kept = mmseg_literal("pascal_context.py", "_mapping")  # 0 and the 59 kept ids
    rng = np.random.default_rng(1)
    masks = {
        split: {name: rng.choice(kept, size=(7, 11)).tolist() for name in names}
        for split, names in (("train", ["2008_000002", "2008_000005"]), ("val", ["2008_000009"]))
    }
    json_path = tmp_path / "trainval_merged.json"
    json_path.write_text(json.dumps(masks))
    for side in ("ours", "mmseg"):
        (tmp_path / side / "VOC2010" / "JPEGImages").mkdir(parents=True)
    assert run_tool("convert_pascal_context", [tmp_path / "ours", "--json", json_path]) == 0
    spec = importlib.util.spec_from_file_location("mmseg_pascal_context", path)
    mmseg_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mmseg_script)
    monkeypatch.setattr(sys, "argv", ["pascal_context.py", str(tmp_path / "mmseg"), str(json_path)])
    mmseg_script.main()
    ours, theirs = (tmp_path / side / "VOC2010" for side in ("ours", "mmseg"))
    for split in ("train", "val"):
        split_file = Path("ImageSets") / "SegmentationContext" / f"{split}.txt"
        assert (ours / split_file).read_text() == (theirs / split_file).read_text() != ""
    pngs = sorted(p.name for p in (theirs / "SegmentationClassContext").iterdir())
    assert pngs == sorted(p.name for p in (ours / "SegmentationClassContext").iterdir())
    assert len(pngs) == 3
    for name in pngs:
        ours_label = np.array(Image.open(ours / "SegmentationClassContext" / name))
        np.testing.assert_array_equal(ours_label, np.array(Image.open(theirs / "SegmentationClassContext" / name)))


def test_pascal_context_json_without_detail_api(tmp_path, capsys):
    (tmp_path / "VOC2010").mkdir()
    if importlib.util.find_spec("detail") is not None:
        pytest.skip("the Detail API is installed")
    assert run_tool("convert_pascal_context", [tmp_path, "--json", tmp_path / "x.json"]) == 1
    assert "Detail API" in capsys.readouterr().err


def test_remap_and_atomic_write(tmp_path):
    lut = np.array([0, -1, 5], np.int16)
    with pytest.raises(ValueError, match=r"f\.png: unexpected label ids \[1, 7\]"):
        remap_label(np.array([[0, 1], [2, 7]], np.uint8), lut, "f.png")
    with pytest.raises(ValueError, match="single-channel"):
        remap_label(np.zeros((2, 2, 3), np.uint8), lut, "f.png")
    target = tmp_path / "out.png"
    write_png_atomic(np.array([[0, 2]], np.uint8), target)
    np.testing.assert_array_equal(np.array(Image.open(target)), [[0, 2]])
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
