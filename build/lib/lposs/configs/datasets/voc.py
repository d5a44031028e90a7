# PASCAL VOC 2012 val (1449 images), 21 classes with background. Paths are relative to the data root.
_base_ = ["./_load_image.py"]
dataset_name = "PASCAL VOC 2012"
dataset_type = "PascalVOCDataset"
data_root = "VOCdevkit/VOC2012"
# Reference quirk: the background row is described by stuff names (aliases separated by ';').
background_aliases = (
    "sky;wall;tree;wood;grass;road;sea;river;mountain;sands;desk;bed;building;cloud;lamp;"
    "door;window;wardrobe;ceiling;shelf;curtain;stair;floor;hill;rail;fence"
)
# Reference quirk: the paper's prompts spell these two VOC names as words (mmseg: diningtable, pottedplant).
prompt_renames = {"diningtable": "dining table", "pottedplant": "potted plant"}
data = dict(
    test=dict(
        type=dataset_type,
        data_root=data_root,
        img_dir="JPEGImages",
        ann_dir="SegmentationClass",
        split="ImageSets/Segmentation/val.txt",
    )
)
