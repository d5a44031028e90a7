# PASCAL Context val (5105 images), 60 classes: class 0 is 'background' (no aliases).
_base_ = ["./_load_image.py"]
dataset_name = "PASCAL Context"
dataset_type = "PascalContextDataset"
data_root = "VOCdevkit/VOC2010"
# Reference quirk: the paper's prompts spell this name as words (mmseg: pottedplant).
prompt_renames = {"pottedplant": "potted plant"}
data = dict(
    test=dict(
        type=dataset_type,
        data_root=data_root,
        img_dir="JPEGImages",
        ann_dir="SegmentationClassContext",
        split="ImageSets/SegmentationContext/val.txt",
    )
)
