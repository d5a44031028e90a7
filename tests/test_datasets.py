"""Dataset building and loading on tiny generated datasets in the SPEC section 3 layouts, and real VOC images."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from fake_datasets import LAYOUTS, NAMES, SHAPES, expected_label, make_dataset, two_colour_image
from PIL import Image

from lposs import datasets
from lposs.datasets import DATASET_KEYS, DatasetError, build_dataset, class_names, load_image, load_label

REPO_ROOT = Path(__file__).resolve().parents[1]
VOC_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc_mini"


def test_import_resolves_to_project_package():
    """Ours is ``lposs.datasets``; a bare ``import datasets`` is left to Hugging Face's package, never shadowed."""
    assert Path(datasets.__file__).resolve().parent == REPO_ROOT / "lposs" / "datasets"
    spec = importlib.util.find_spec("datasets")
    assert spec is None or REPO_ROOT not in Path(spec.origin or "").resolve().parents


@pytest.mark.parametrize("key", DATASET_KEYS)
def test_build_and_load_every_dataset(tmp_path, key):
    raw = make_dataset(tmp_path, key)
    _, _, split, _, reduce_zero_label, num_classes = LAYOUTS[key]
    dataset = build_dataset(key, tmp_path)
    assert len(dataset) == 2
    assert len(class_names(key)) == num_classes == len(dataset.CLASSES)
    order = list(NAMES) if split is not None else sorted(NAMES)  # split order, else sorted listing
    for idx, name in enumerate(order):
        image, info = load_image(dataset, idx)
        h, w = SHAPES[name]
        assert image.dtype == np.uint8 and image.shape == (h, w, 3)
        assert info["ori_shape"] == (h, w, 3) and Path(info["filename"]).name.startswith(name)
        assert image[h // 2, 2, 0] > 200 and image[h // 2, 2, 2] < 50  # red left: RGB, not BGR
        assert image[h // 2, w - 3, 2] > 200 and image[h // 2, w - 3, 0] < 50
        label = load_label(dataset, idx)
        assert label.dtype == np.int64
        np.testing.assert_array_equal(label, expected_label(raw[name], reduce_zero_label))
        np.testing.assert_array_equal(load_label(dataset, idx, image.shape), label)


def test_class_names_and_aliases():
    voc = class_names("voc")
    assert voc[0].split(";")[:3] == ["sky", "wall", "tree"] and len(voc[0].split(";")) == 26
    assert voc[1:4] == ["aeroplane", "bicycle", "bird"] and voc[-1] == "tvmonitor"
    assert class_names("voc", aliases=False)[0] == "background"
    assert class_names("voc20") == voc[1:]
    coco = class_names("coco_object")
    assert len(coco[0].split(";")) == 17 and "lamp" not in coco[0].split(";")
    assert coco[1] == "person" and coco[-1] == "toothbrush"
    stuff = class_names("coco_stuff")[:80]
    assert [n for n, m in zip(coco[1:], stuff) if n != m] == ["aeroplane"]  # the paper's one COCO-Object rename
    assert class_names("context")[0] == "background" and class_names("context")[1:] == class_names("context59")
    assert "building-other" in class_names("coco_stuff")
    assert class_names("cityscapes")[:2] == ["road", "sidewalk"] and class_names("ade20k")[:2] == ["wall", "building"]


@pytest.mark.data
@pytest.mark.skipif(not VOC_MINI.is_dir(), reason="needs ../shared/data/voc_mini")
def test_real_voc_images():
    voc, voc20 = build_dataset("voc", VOC_MINI), build_dataset("voc20", VOC_MINI)
    assert len(voc) == len(voc20) > 0
    for idx in range(len(voc)):
        image, info = load_image(voc, idx)
        raw = np.array(
            Image.open(VOC_MINI / "VOCdevkit/VOC2012/SegmentationClass" / info["ori_filename"].replace(".jpg", ".png"))
        )  # palette indices
        label = load_label(voc, idx, image.shape)
        assert image.shape[:2] == label.shape
        np.testing.assert_array_equal(label, raw)
        assert set(np.unique(label)) <= set(range(21)) | {255}
        np.testing.assert_array_equal(load_label(voc20, idx), np.where((raw == 0) | (raw == 255), 255, raw - 1))


def test_unknown_key():
    with pytest.raises(DatasetError, match=r"unknown dataset key 'pascal'.*voc, voc20, context"):
        build_dataset("pascal", ".")
    with pytest.raises(DatasetError, match="valid keys"):
        class_names("voc21")


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ADEChallengeData2016.*Preparing the datasets"):
        build_dataset("ade20k", tmp_path)
    (tmp_path / "ADEChallengeData2016/images/validation").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"label folder.*annotations/validation"):
        build_dataset("ade20k", tmp_path)


def test_missing_split_file(tmp_path):
    make_dataset(tmp_path, "voc")
    (tmp_path / LAYOUTS["voc"][2]).unlink()
    with pytest.raises(FileNotFoundError, match=r"split file.*ImageSets/Segmentation/val.txt"):
        build_dataset("voc", tmp_path)


def test_empty_dataset(tmp_path):
    make_dataset(tmp_path, "coco_stuff", names=())
    for folder in ("images", "annotations"):
        (tmp_path / "coco_stuff164k" / folder / "val2017").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no image with suffix '.jpg'"):
        build_dataset("coco_stuff", tmp_path)


def test_unreadable_and_missing_files(tmp_path):
    make_dataset(tmp_path, "voc")
    dataset = build_dataset("voc", tmp_path)
    image_path = tmp_path / LAYOUTS["voc"][0].format(NAMES[0])
    label_path = tmp_path / LAYOUTS["voc"][1].format(NAMES[0])
    image_path.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"cannot read image .*img_b\.jpg"):
        load_image(dataset, 0)
    label_path.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read label .*img_b\.png"):
        load_label(dataset, 0, (64, 40))
    image_path.unlink()
    with pytest.raises(FileNotFoundError, match=r"image not found: .*img_b\.jpg"):
        load_image(dataset, 0)
    label_path.unlink()
    with pytest.raises(FileNotFoundError, match=r"label not found: .*img_b\.png"):
        load_label(dataset, 0)


def test_label_size_mismatch(tmp_path):
    make_dataset(tmp_path, "cityscapes")
    label_path = tmp_path / LAYOUTS["cityscapes"][1].format("img_a")
    Image.fromarray(np.zeros((53, 37), np.uint8)).save(label_path)  # transposed
    dataset = build_dataset("cityscapes", tmp_path)
    with pytest.raises(
        DatasetError, match=r"img_a_gtFine_labelTrainIds\.png is 53x37 .*img_a_leftImg8bit\.png is 37x53"
    ):
        load_label(dataset, 0)
    image, _ = load_image(dataset, 0)
    with pytest.raises(DatasetError, match="53x37"):
        load_label(dataset, 0, image.shape)


def test_exif_rotated_image_size_matches_decoded_image(tmp_path):
    make_dataset(tmp_path, "ade20k")
    image_path = tmp_path / LAYOUTS["ade20k"][0].format("img_a")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: decoded height and width swap
    Image.fromarray(two_colour_image(53, 37)).save(image_path, exif=exif.tobytes())
    dataset = build_dataset("ade20k", tmp_path)
    image, _ = load_image(dataset, 0)
    assert image.shape[:2] == SHAPES["img_a"]
    assert load_label(dataset, 0).shape == SHAPES["img_a"]
