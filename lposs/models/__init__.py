"""Frozen backbones of LPOSS: dense CLIP features (MaskCLIP and other heads), CLIP text classifier, DINO features.

Any patch size: open_clip ViTs (B/16, L/14, B/32...) and CLIP towers on timm trunks (EVA02, SigLIP / SigLIP2,
PE-Core), timm DINO (S/16, B/16, S/8, B/8) and DINOv2 (/14, registers).
"""

from .checks import (
    DTYPES,
    CheckpointNotFoundError,
    ModelConfigError,
    check_crop,
    check_model_config,
    resolve_dtype,
)
from .clip_heads import CLIP_HEADS, NACLIP_GAUSSIAN_STD, PROXY_BETA, PROXY_GAMMA
from .dino import DINO_FEATURES, IMAGENET_MEAN, IMAGENET_STD, dino_feature_maps, dino_features, dino_value_features
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
    "CLIP_HEADS",
    "DINO_FEATURES",
    "DTYPES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGENET_TEMPLATES",
    "NACLIP_GAUSSIAN_STD",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "PROXY_BETA",
    "PROXY_GAMMA",
    "CheckpointNotFoundError",
    "LPOSSBackbones",
    "ModelConfigError",
    "WeightsUnavailableError",
    "build_clip",
    "build_dino",
    "check_crop",
    "check_model_config",
    "clear_text_cache",
    "dense_clip_features",
    "dino_feature_maps",
    "dino_features",
    "dino_value_features",
    "resolve_dtype",
    "split_aliases",
    "text_cache_dir",
    "text_classifier",
]
