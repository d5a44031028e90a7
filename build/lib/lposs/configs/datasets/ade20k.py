# ADE20k val (2000 images), 150 classes, reduce_zero_label (0 -> 255, others - 1).
_base_ = ["./_load_image.py"]
dataset_name = "ADE20k"
dataset_type = "ADE20KDataset"
data_root = "ADEChallengeData2016"
data = dict(
    test=dict(type=dataset_type, data_root=data_root, img_dir="images/validation", ann_dir="annotations/validation")
)
