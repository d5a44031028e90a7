"""Frozen backbones of LPOSS: MaskCLIP dense features, CLIP text classifier, DINO value features."""

from .checks import DTYPES, CheckpointNotFoundError, ModelConfigError, check_model_config, resolve_dtype
from .dino import IMAGENET_MEAN, IMAGENET_STD, dino_value_features
from .factory import BUILDERS, WeightsUnavailableError, build_clip, build_dino
from .lposs import LPOSSBackbones
from .maskclip import (
    IMAGENET_TEMPLATES,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    clear_text_cache,
    dense_clip_features,
    split_aliases,
    text_classifier,
)
from .text_cache import CACHE_ENV, text_cache_dir

__all__ = [
    "BUILDERS",
    "CACHE_ENV",
    "DTYPES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGENET_TEMPLATES",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "CheckpointNotFoundError",
    "LPOSSBackbones",
    "ModelConfigError",
    "WeightsUnavailableError",
    "build_clip",
    "build_dino",
    "check_model_config",
    "clear_text_cache",
    "dense_clip_features",
    "dino_value_features",
    "resolve_dtype",
    "split_aliases",
    "text_cache_dir",
    "text_classifier",
]
