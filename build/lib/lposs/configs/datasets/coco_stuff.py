# COCO-Stuff164k val (5000 images), 171 classes, labels `*_labelTrainIds.png`
# (tools/convert_coco_stuff.py). No split file: every image of img_dir is used, sorted by name.
_base_ = ["./_load_image.py"]
dataset_name = "COCO-Stuff"
dataset_type = "COCOStuffDataset"
data_root = "coco_stuff164k"
data = dict(test=dict(type=dataset_type, data_root=data_root, img_dir="images/val2017", ann_dir="annotations/val2017"))
