"""The eight benchmark datasets of LPOSS (mmseg 0.30 test splits), datasets described by a YAML file
(:mod:`lposs.datasets.custom`), image files as users have them, and the benchmarks' label conversion tables.

This package must keep the name ``datasets`` (the paper's layout); it is not Hugging Face ``datasets``.
"""

import logging
import warnings


def _quiet_mmcv_import() -> None:
    """Import mmcv without its two start-up notices, each silenced at its source and nothing else:

    - mmcv 1.7's UserWarning announcing mmcv 2.0 (filtered by its message, for this import only);
    - torch's "No CUDA runtime is found" line, logged by ``torch.utils.cpp_extension`` when mmcv imports it on a
      machine without CUDA (that logger is raised to ERROR for this import only; mmcv's compiled ops are unused).
    """
    extension_log = logging.getLogger("torch.utils.cpp_extension")
    level = extension_log.level
    extension_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="On January 1, 2023, MMCV will release v2.0.0", category=UserWarning
            )
            import mmcv  # noqa: F401
    finally:
        extension_log.setLevel(level)


_quiet_mmcv_import()

from .build import (  # noqa: E402
    DATASET_KEYS,
    build_dataset,
    class_names,
    dataset_config,
    load_image,
    load_label,
    resolve_keys,
    stray_labels,
)
from .custom import DatasetFile, load_dataset_file, user_dataset_folder  # noqa: E402
from .errors import DatasetError  # noqa: E402
from .method_class_names import CLASS_NAME_SOURCES, protocol_class_names  # noqa: E402

__all__ = [
    "CLASS_NAME_SOURCES",
    "DATASET_KEYS",
    "DatasetError",
    "DatasetFile",
    "build_dataset",
    "class_names",
    "dataset_config",
    "load_dataset_file",
    "load_image",
    "load_label",
    "protocol_class_names",
    "resolve_keys",
    "stray_labels",
    "user_dataset_folder",
]
