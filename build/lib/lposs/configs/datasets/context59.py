# PASCAL Context val without background: 59 classes, reduce_zero_label (0 -> 255, others - 1).
# Same images, labels and split as context.py; only the dataset class differs.
_base_ = ["./context.py"]
dataset_type = "PascalContextDataset59"
data = dict(test=dict(type=dataset_type))
