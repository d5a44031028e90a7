"""Frozen backbones of LPOSS: MaskCLIP dense features, CLIP text classifier, DINO value features."""

from .dino import IMAGENET_MEAN, IMAGENET_STD, dino_value_features
from .factory import BUILDERS, DTYPES, WeightsUnavailableError, build_clip, build_dino, resolve_dtype
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

__all__ = [
    "BUILDERS",
    "DTYPES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGENET_TEMPLATES",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "LPOSSBackbones",
    "WeightsUnavailableError",
    "build_clip",
    "build_dino",
    "clear_text_cache",
    "dense_clip_features",
    "dino_value_features",
    "resolve_dtype",
    "split_aliases",
    "text_classifier",
]
