"""The two benchmark datasets mmseg 0.30 lacks, registered in mmseg's DATASETS registry.

Importing this module registers them; re-importing (or a second copy of the same class) is harmless
because registration uses ``force=True``.
"""

from mmseg.datasets import DATASETS, COCOStuffDataset, CustomDataset, PascalVOCDataset


@DATASETS.register_module(force=True)
class PascalVOCDataset20(CustomDataset):
    """PASCAL VOC 2012 without background: 20 classes, ``reduce_zero_label`` fixed to True."""

    CLASSES = PascalVOCDataset.CLASSES[1:]
    PALETTE = PascalVOCDataset.PALETTE[1:]

    def __init__(self, split: str, **kwargs) -> None:
        super().__init__(img_suffix=".jpg", seg_map_suffix=".png", split=split, reduce_zero_label=True, **kwargs)


@DATASETS.register_module(force=True)
class COCOObjectDataset(CustomDataset):
    """COCO-Object: background + the 80 COCO thing classes (mmseg's COCO-Stuff names, in id order).

    Labels are ``*_instanceTrainIds.png`` written by ``tools/convert_coco_object.py``.
    """

    CLASSES = ("background",) + COCOStuffDataset.CLASSES[:80]
    PALETTE = [[0, 0, 0]] + COCOStuffDataset.PALETTE[:80]

    def __init__(self, **kwargs) -> None:
        super().__init__(img_suffix=".jpg", seg_map_suffix="_instanceTrainIds.png", **kwargs)
