# Cityscapes val (500 images), 19 classes, labels `*_gtFine_labelTrainIds.png`
# (tools/convert_cityscapes.py). Images are found recursively (one folder per city).
_base_ = ["./_load_image.py"]
dataset_name = "Cityscapes"
dataset_type = "CityscapesDataset"
data_root = "cityscapes"
data = dict(test=dict(type=dataset_type, data_root=data_root, img_dir="leftImg8bit/val", ann_dir="gtFine/val"))
