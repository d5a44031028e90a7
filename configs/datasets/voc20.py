# PASCAL VOC 2012 val without background: 20 classes, reduce_zero_label (0 -> 255, others - 1).
_base_ = ['./_load_image.py']
dataset_name = 'PASCAL VOC 2012'
dataset_type = 'PascalVOCDataset20'
data_root = 'VOCdevkit/VOC2012'
data = dict(
    test=dict(
        type=dataset_type,
        data_root=data_root,
        img_dir='JPEGImages',
        ann_dir='SegmentationClass',
        split='ImageSets/Segmentation/val.txt'))
