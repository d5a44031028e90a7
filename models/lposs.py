"""The two frozen backbones of LPOSS: DINO patch features and CLIP patch-to-text scores (SPEC steps 4-7).

No propagation here: the algorithm lives in `segmentation/label_propagation.py`.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .dino import dino_value_features
from .factory import Device, build_clip, build_dino
from .maskclip import IMAGENET_TEMPLATES, TEMPLATE_SETS, Template, dense_clip_features, text_classifier


def _config_value(cfg: Any, dotted: str) -> Any:
    """cfg['a']['b'] for dotted 'a.b'; works for dicts and omegaconf DictConfigs."""
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) and not hasattr(node, "keys"):
            raise ValueError(f"model config: expected a mapping above key '{dotted}', got {type(node).__name__}")
        if part not in node:
            raise ValueError(f"model config: missing key 'model.{dotted}'")
        node = node[part]
    return node


class LPOSSBackbones(nn.Module):
    """CLIP (MaskCLIP dense features + text classifier) and DINO (value features), frozen.

    Call `set_classes` once per dataset, then `forward` on batches of windows.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Callable,
        dino_model: nn.Module,
        templates: Sequence[Template] = IMAGENET_TEMPLATES,
    ) -> None:
        super().__init__()
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.dino = dino_model
        self.templates = tuple(templates)  # prompt templates of the text classifier (CLIP's 80 by default)
        self.text_embeddings: torch.Tensor | None = None  # [A, E] float32, L2-normalised
        self.alias_to_class: torch.Tensor | None = None  # [A] int64
        self.class_names: list[str] | None = None

    @classmethod
    def from_config(cls, model_cfg: Any, device: Device = "cpu") -> "LPOSSBackbones":
        """Build from the `model` config section (dict or DictConfig).

        Keys: clip.name, clip.pretrained, dino.name, dino.pretrained, dtype ('float32' | 'float16' | 'bfloat16'),
        optional templates ('imagenet80', the default and the paper's, or 'single').
        """
        dtype = _config_value(model_cfg, "dtype")
        template_set = model_cfg.get("templates", "imagenet80")
        if template_set not in TEMPLATE_SETS:
            raise ValueError(
                f"config value model.templates={template_set!r} is invalid: expected one of {', '.join(TEMPLATE_SETS)}"
            )
        clip_model, tokenizer = build_clip(
            _config_value(model_cfg, "clip.name"), _config_value(model_cfg, "clip.pretrained"), device, dtype
        )
        dino_model = build_dino(
            _config_value(model_cfg, "dino.name"), _config_value(model_cfg, "dino.pretrained"), device, dtype
        )
        return cls(clip_model, tokenizer, dino_model, TEMPLATE_SETS[template_set])

    @property
    def device(self) -> torch.device:
        """Device of the backbone parameters."""
        return next(self.parameters()).device

    def set_classes(self, class_names: Sequence[str]) -> None:
        """Encode the class names (';'-separated aliases) with CLIP; cached per model and class list.

        Sets `text_embeddings` [A, E] float32 and `alias_to_class` [A] int64, A = number of aliases.
        """
        self.text_embeddings, self.alias_to_class = text_classifier(
            self.clip, self.tokenizer, list(class_names), self.templates
        )
        self.class_names = list(class_names)

    @torch.no_grad()
    def forward(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch features and initial patch scores of a batch of windows.

        Args:
            windows: [B, 3, h, w] float RGB in [0, 1].

        Returns:
            features: [B, D, gh, gw] float32 DINO value features, unit L2 norm along D;
            scores: [B, A, gh, gw] float32 cosine similarities in [-1, 1] between the (L2-normalised) MaskCLIP
                patch features and the alias embeddings, no softmax or temperature (SPEC step 7).
            gh, gw = ceil(h / 16), ceil(w / 16).
        """
        if self.text_embeddings is None:
            raise ValueError("LPOSSBackbones.forward: call set_classes(class_names) first")
        features = dino_value_features(self.dino, windows)  # [B, D, gh, gw]
        clip_features = dense_clip_features(self.clip, windows)  # [B, E, gh', gw']
        if clip_features.shape[-2:] != features.shape[-2:]:
            clip_features = F.interpolate(clip_features, size=features.shape[-2:], mode="bilinear", align_corners=False)
        clip_features = F.normalize(clip_features, dim=1)
        text = self.text_embeddings.to(clip_features.device)
        scores = torch.einsum("behw,ae->bahw", clip_features, text)  # [B, A, gh, gw]
        return features, scores
