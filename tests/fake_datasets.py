"""Tiny generated datasets in the SPEC section 3 layouts and users' own layouts, for dataset and end-to-end tests."""

import numpy as np
from PIL import Image

# Written from SPEC section 3, independently of configs/datasets: (image path, label path, split file or
# None, raw label ids used, reduce_zero_label, number of classes).
LAYOUTS = {
    "voc": (
        "VOCdevkit/VOC2012/JPEGImages/{}.jpg",
        "VOCdevkit/VOC2012/SegmentationClass/{}.png",
        "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt",
        21,
        False,
        21,
    ),
    "voc20": (
        "VOCdevkit/VOC2012/JPEGImages/{}.jpg",
        "VOCdevkit/VOC2012/SegmentationClass/{}.png",
        "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt",
        21,
        True,
        20,
    ),
    "context": (
        "VOCdevkit/VOC2010/JPEGImages/{}.jpg",
        "VOCdevkit/VOC2010/SegmentationClassContext/{}.png",
        "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt",
        60,
        False,
        60,
    ),
    "context59": (
        "VOCdevkit/VOC2010/JPEGImages/{}.jpg",
        "VOCdevkit/VOC2010/SegmentationClassContext/{}.png",
        "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt",
        60,
        True,
        59,
    ),
    "coco_object": (
        "coco_stuff164k/images/val2017/{}.jpg",
        "coco_stuff164k/annotations/val2017/{}_instanceTrainIds.png",
        None,
        81,
        False,
        81,
    ),
    "coco_stuff": (
        "coco_stuff164k/images/val2017/{}.jpg",
        "coco_stuff164k/annotations/val2017/{}_labelTrainIds.png",
        None,
        171,
        False,
        171,
    ),
    "cityscapes": (
        "cityscapes/leftImg8bit/val/aachen/{}_leftImg8bit.png",
        "cityscapes/gtFine/val/aachen/{}_gtFine_labelTrainIds.png",
        None,
        19,
        False,
        19,
    ),
    "ade20k": (
        "ADEChallengeData2016/images/validation/{}.jpg",
        "ADEChallengeData2016/annotations/validation/{}.png",
        None,
        151,
        True,
        150,
    ),
}
NAMES = ("img_b", "img_a")  # listed unsorted in split files; directory listings come out sorted
SHAPES = {"img_a": (37, 53), "img_b": (64, 40)}  # non-square, one landscape, one portrait


def two_colour_image(h, w):
    """Red left half, blue right half: RGB order is checkable after a lossy JPEG round trip."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2, 0] = 255
    image[:, w // 2 :, 2] = 255
    return image


def raw_label(h, w, num_ids, seed):
    """Label ids in [0, num_ids) with an ignored (255) block."""
    label = np.random.default_rng(seed).integers(0, num_ids, size=(h, w)).astype(np.uint8)
    label[:4, :6] = 255
    return label


def make_dataset(root, key, names=NAMES):
    image_fmt, label_fmt, split, num_ids, _, _ = LAYOUTS[key]
    labels = {}
    for i, name in enumerate(names):
        h, w = SHAPES[name]
        image_path, label_path = root / image_fmt.format(name), root / label_fmt.format(name)
        image_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(two_colour_image(h, w)).save(image_path, quality=100)
        labels[name] = raw_label(h, w, num_ids, seed=i)
        Image.fromarray(labels[name]).save(label_path)
    if split is not None:
        (root / split).parent.mkdir(parents=True, exist_ok=True)
        (root / split).write_text("".join(f"{n}\n" for n in names))
    return labels


def expected_label(raw, reduce_zero_label):
    """SPEC section 2: 0 -> 255, every other label minus 1 (255 stays 255)."""
    out = raw.astype(np.int64)
    if reduce_zero_label:
        out = np.where((raw == 0) | (raw == 255), 255, out - 1)
    return out


# A user's own dataset (docs/datasets.md, "Your own dataset"): images in sub-folders, labels beside them in the
# same tree, a dataset file. Names sort differently from their split order, as in NAMES above.
USER_NAMES = ("site_b/0002", "site_a/0001")
USER_SHAPES = {"site_b/0002": (64, 40), "site_a/0001": (37, 53)}


def make_user_dataset(root, text, names=USER_NAMES, values=(0, 3), palette=None, split=None):
    """Write images and labels under ``root`` and the dataset file ``root/mydata.yaml`` holding ``text``.

    Images go to ``root/images/<name>.jpg``, labels to ``root/labels/<name>.png``: label values drawn from
    ``range(*values)`` plus 255, or, with ``palette`` (value -> colour), RGB labels of those values' colours.

    Returns:
        the dataset file's path, and each name's ``[H, W]`` label values (before any conversion).
    """
    raw = {}
    for i, name in enumerate(names):
        h, w = USER_SHAPES[name]
        image, label = root / "images" / f"{name}.jpg", root / "labels" / f"{name}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        label.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(two_colour_image(h, w)).save(image, quality=100)
        raw[name] = np.random.default_rng(i).integers(*values, size=(h, w)).astype(np.uint8)
        raw[name][:4, :6] = 255
        if palette is None:
            Image.fromarray(raw[name]).save(label)
        else:
            lookup = np.zeros((256, 3), np.uint8)
            for value, colour in palette.items():
                lookup[value] = colour
            Image.fromarray(lookup[raw[name]]).save(label)
    if split is not None:
        (root / split).write_text("".join(f"{n}\n" for n in names))
    (root / "mydata.yaml").write_text(text)
    return root / "mydata.yaml", raw
