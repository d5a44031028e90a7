# PASCAL Context val without background: 59 classes, reduce_zero_label (0 -> 255, others - 1).
_base_ = ['./_load_image.py']
dataset_name = 'PASCAL Context'
dataset_type = 'PascalContextDataset59'
data_root = 'VOCdevkit/VOC2010'
data = dict(
    test=dict(
        type=dataset_type,
        data_root=data_root,
        img_dir='JPEGImages',
        ann_dir='SegmentationClassContext',
        split='ImageSets/SegmentationContext/val.txt'))
