"""The typed schema of the configs in ``configs/``: every key and its type, no default values.

The defaults live in ``configs/lposs.yaml`` only (one source of truth): every field here is ``MISSING``, and
:func:`evaluation.config.load_config` merges the composed YAML onto this schema, so OmegaConf rejects an
unknown key or a value of the wrong type. Value ranges (``k >= 1``, ``alpha`` in ``(0, 1)``...) are checked
in ``evaluation/config.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

__all__ = ["ClipConfig", "DinoConfig", "LPOSSConfig", "ModelConfig", "WandbConfig"]


@dataclass
class ClipConfig:
    """The vision-language backbone (open_clip)."""

    name: str = MISSING
    pretrained: str | None = MISSING  # a pretrained tag, a local checkpoint path, or null (random weights)
    head: str = MISSING  # the last block: maskclip (the paper's) | sclip | clearclip | naclip | proxyclip
    proxy_features: str = MISSING  # proxyclip's proxy: the DINO feature kind v | k | q | x (ProxyCLIP's: x)
    proxy_beta: float = MISSING  # proxyclip's beta (1.2)
    proxy_gamma: float = MISSING  # proxyclip's gamma (3.0)
    tokenizer: str | None = MISSING  # a local Hugging Face tokenizer folder (SigLIP's), or null: the hub
    pos_interpolation: str = MISSING  # positional embedding to another grid: size (LPOSS's) | offset (the baselines')


@dataclass
class DinoConfig:
    """The vision backbone (timm)."""

    name: str = MISSING
    pretrained: bool | str | None = MISSING  # true (timm's weights), a local checkpoint path, or null/false
    features: str = MISSING  # the graph's features: v (the paper's) | k | q (of the last qkv) | x (the output)


@dataclass
class ModelConfig:
    """Both backbones, their dtype and the prompt templates."""

    clip: ClipConfig = field(default_factory=ClipConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    dtype: str = MISSING
    templates: str = MISSING


@dataclass
class WandbConfig:
    """Weights & Biases logging."""

    mode: str = MISSING
    project: str = MISSING
    entity: str | None = MISSING


@dataclass
class LPOSSConfig:
    """A whole run: method switches, windows, both propagation levels, solver, running."""

    model: ModelConfig = field(default_factory=ModelConfig)
    patch_propagation: bool = MISSING
    pixel_refine: bool = MISSING
    short_side: int = MISSING
    long_side: int = MISSING
    crop: int = MISSING
    stride: int = MISSING
    window_batch: int = MISSING
    k: int = MISSING
    gamma: float = MISSING
    sigma: float = MISSING
    pix_dist_pow: float = MISSING
    alpha: float = MISSING
    knn_backend: str = MISSING
    tau: float = MISSING
    r: int = MISSING
    pixel_backend: str = MISSING
    tol: float = MISSING
    maxiter: int = MISSING
    data_root: str = MISSING
    device: str = MISSING
    strict_float32: bool = MISSING
    seed: int = MISSING
    num_workers: int = MISSING
    dist_timeout: float = MISSING
    # post-processing (docs/method.md, "Own protocols"): the baselines' protocols; LPOSS's has none
    class_names: str = MISSING  # lposs (this toolkit's lists) | sclip | clearclip | proxyclip (the authors' files)
    class_files_dir: str | None = MISSING  # a folder of the authors' cls_<dataset>.txt; null: the shipped files
    logit_scale: float | None = MISSING  # softmax(logit_scale * scores) over names; null: raw scores
    pamr_steps: int = MISSING  # PAMR rounds (NACLIP: 10); 0: none
    pamr_dilations: list[int] = MISSING  # PAMR's neighbour distances in pixels (NACLIP: [8, 16])
    area_thd: float | None = MISSING  # SCLIP's area threshold; null: none
    prob_thd: float | None = MISSING  # below it (top class score), the background class; null: none
    background: int = MISSING  # index of the background class (prob_thd, area_thd)
    per_dataset: dict[str, Any] = MISSING  # dataset key -> {key: value} replacing those values for that dataset
    wandb: WandbConfig = field(default_factory=WandbConfig)
