# COCO-Object: COCO val2017 (5000 images), 80 thing classes + background (labels from
# tools/convert_coco_object.py). No split file: every image of img_dir is used, sorted by name.
_base_ = ['./_load_image.py']
dataset_name = 'COCO-Object'
dataset_type = 'COCOObjectDataset'
data_root = 'coco_stuff164k'
# Reference quirk: the background row is described by stuff names (aliases separated by ';').
background_aliases = 'sky;wall;tree;wood;grass;road;sea;river;mountain;sands;desk;bed;building;cloud;floor;hill;rail'
data = dict(
    test=dict(
        type=dataset_type,
        data_root=data_root,
        img_dir='images/val2017',
        ann_dir='annotations/val2017'))
