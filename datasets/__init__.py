"""The eight benchmark datasets of LPOSS (mmseg 0.30 test splits) and their label conversion tables.

This package must keep the name ``datasets`` (the paper's layout); it is not Hugging Face ``datasets``.
"""

from .build import DATASET_KEYS, build_dataset, class_names, dataset_config, load_image, load_label
from .errors import DatasetError

__all__ = [
    "DATASET_KEYS",
    "DatasetError",
    "build_dataset",
    "class_names",
    "dataset_config",
    "load_image",
    "load_label",
]
