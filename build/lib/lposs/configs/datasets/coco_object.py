# COCO-Object: COCO val2017 (5000 images), 80 thing classes + background, labels `*_instanceTrainIds.png`
# (tools/convert_coco_object.py). Same folders as coco_stuff.py (no split file: every image of img_dir is
# used, sorted by name); only the dataset class and the background aliases differ.
_base_ = ["./coco_stuff.py"]
dataset_name = "COCO-Object"
dataset_type = "COCOObjectDataset"
# Reference quirk: the background row is described by stuff names (aliases separated by ';').
background_aliases = "sky;wall;tree;wood;grass;road;sea;river;mountain;sands;desk;bed;building;cloud;floor;hill;rail"
# Reference quirk: the paper's COCO-Object prompts say aeroplane (mmseg's COCO names, and COCO-Stuff's prompts,
# say airplane).
prompt_renames = {"airplane": "aeroplane"}
data = dict(test=dict(type=dataset_type))
