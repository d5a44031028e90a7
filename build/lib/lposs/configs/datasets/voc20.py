# PASCAL VOC 2012 val without background: 20 classes, reduce_zero_label (0 -> 255, others - 1).
# Same images, labels and split as voc.py; only the dataset class differs.
_base_ = ["./voc.py"]
dataset_type = "PascalVOCDataset20"
background_aliases = None  # no background row: do not inherit voc.py's aliases
data = dict(test=dict(type=dataset_type))
