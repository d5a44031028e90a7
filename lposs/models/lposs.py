"""The two frozen backbones of LPOSS: DINO patch features and CLIP patch-to-text scores.

See docs/method.md, "Pipeline", steps 4-7, and "Two grids" for backbones of different patch sizes.

No propagation here: the algorithm lives in `segmentation/label_propagation.py`.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._precision import autocast_context
from .checks import (
    DTYPES,
    Device,
    ModelConfigError,
    check_choice,
    check_model_config,
    config_value,
    optional_value,
)
from .clip_heads import CLIP_HEADS, PROXY_BETA, PROXY_GAMMA
from .dino import DINO_FEATURES, dino_feature_maps, dino_features, dino_patch_size
from .factory import build_clip, build_dino
from .maskclip import IMAGENET_TEMPLATES, TEMPLATE_SETS, Template, clip_patch_size, dense_clip_features, text_classifier
from .timm_clip import is_timm_tower

# The ProxyCLIP settings of the config (model.clip.*) and their defaults, which are ProxyCLIP's.
PROXY_DEFAULTS = {"proxy_features": "x", "proxy_beta": PROXY_BETA, "proxy_gamma": PROXY_GAMMA}


class LPOSSBackbones(nn.Module):
    """CLIP (dense features of a head, MaskCLIP by default, + text classifier) and DINO (value features by default),
    frozen.

    Call `set_classes` once per dataset, then `forward` on batches of windows.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Callable,
        dino_model: nn.Module,
        templates: Sequence[Template] = IMAGENET_TEMPLATES,
        precision: torch.dtype | None = None,
        clip_id: Mapping[str, Any] | None = None,
        clip_head: str = "maskclip",
        dino_kind: str = "v",
        proxy: Mapping[str, Any] | None = None,
    ) -> None:
        """`precision`: bfloat16 / float16 runs both backbones and the text encoder under torch.autocast (outputs
        stay float32); None or float32 runs them in their own dtype. `clip_id` ({'name', 'pretrained'}) is part of
        the key of the on-disk text-embedding cache (the head is not: it does not touch the text side).
        `clip_head`: the last CLIP block ('maskclip', 'sclip', 'clearclip', 'naclip', 'proxyclip'); `dino_kind`: the
        DINO feature of the graph ('v', 'k', 'q', 'x'); `proxy`: ProxyCLIP's settings, keys of PROXY_DEFAULTS
        (proxy_features: the DINO kind of its proxy, default 'x'; proxy_beta, proxy_gamma: 1.2, 3.0); see
        docs/method.md, "Heads"."""
        super().__init__()
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.dino = dino_model
        self.templates = tuple(templates)  # prompt templates of the text classifier (CLIP's 80 by default)
        self.precision = precision
        self.clip_id = dict(clip_id) if clip_id is not None else None
        self.clip_head = clip_head
        self.dino_kind = dino_kind
        self.proxy = {**PROXY_DEFAULTS, **(proxy or {})}
        self.pos_interpolation = "size"  # model.clip.pos_interpolation: 'offset' for the baselines' own protocols
        self.text_embeddings: torch.Tensor | None = None  # [A, E] float32, L2-normalised
        self.alias_to_class: torch.Tensor | None = None  # [A] int64
        self.class_names: list[str] | None = None
        self.text_blocks: list[torch.Tensor] | None = None  # set_class_groups: [A_g, E] per class list

    @classmethod
    def from_config(cls, model_cfg: Any, device: Device = "cpu") -> "LPOSSBackbones":
        """Build from the `model` config section (dict or DictConfig), after `check_model_config`.

        Keys: clip.name, clip.pretrained, dino.name, dino.pretrained, dtype ('float32' | 'float16' | 'bfloat16':
        the weights stay float32, half types run under torch.autocast), optional templates ('imagenet80', the
        default and the paper's, or 'single'), optional clip.head (default 'maskclip'), clip.proxy_features,
        clip.proxy_beta, clip.proxy_gamma (ProxyCLIP's: x, 1.2, 3.0), clip.tokenizer (a local Hugging Face tokenizer
        folder for SigLIP's, default null: the hub) and dino.features (default 'v').

        Raises:
            ModelConfigError: a bad value, before any weights are read (one line naming key and value).
        """
        check_model_config(model_cfg, device)
        clip_name, clip_pretrained = config_value(model_cfg, "clip.name"), config_value(model_cfg, "clip.pretrained")
        folder = optional_value(model_cfg, "clip.tokenizer", None)  # SigLIP's Hugging Face tokenizer, read locally
        clip_model, tokenizer = build_clip(clip_name, clip_pretrained, device, tokenizer=folder)
        dino_model = build_dino(
            config_value(model_cfg, "dino.name"), config_value(model_cfg, "dino.pretrained"), device
        )
        templates = TEMPLATE_SETS[model_cfg.get("templates", "imagenet80")]
        precision = DTYPES[config_value(model_cfg, "dtype")]
        clip_id = {"name": clip_name, "pretrained": clip_pretrained}
        head, kind = optional_value(model_cfg, "clip.head", "maskclip"), optional_value(model_cfg, "dino.features", "v")
        proxy = {key: optional_value(model_cfg, f"clip.{key}", value) for key, value in PROXY_DEFAULTS.items()}
        backbones = cls(clip_model, tokenizer, dino_model, templates, precision, clip_id, head, kind, proxy)
        backbones.pos_interpolation = optional_value(model_cfg, "clip.pos_interpolation", "size")
        return backbones

    def set_heads(
        self, clip_head: str = "maskclip", dino_kind: str = "v", proxy: Mapping[str, Any] | None = None
    ) -> None:
        """Switch the CLIP head, the DINO feature kind and ProxyCLIP's settings on the loaded weights (none of them
        changes the weights); `proxy` as in `__init__`, its missing keys ProxyCLIP's defaults.

        Raises:
            ModelConfigError: a name outside CLIP_HEADS or DINO_FEATURES (one line naming key and value).
        """
        check_choice("clip.head", clip_head, CLIP_HEADS)
        check_choice("dino.features", dino_kind, DINO_FEATURES)
        if clip_head != "maskclip" and is_timm_tower(self.clip.visual):
            raise ModelConfigError(
                f"model.clip.head={clip_head!r}: reads open_clip's own ViT blocks, and this CLIP's visual tower is a "
                "timm trunk; use model.clip.head=maskclip (its own reading, docs/method.md, 'Other backbones')"
            )
        proxy = {**PROXY_DEFAULTS, **(proxy or {})}
        check_choice("clip.proxy_features", proxy["proxy_features"], DINO_FEATURES)
        if set(proxy) != set(PROXY_DEFAULTS):
            raise ModelConfigError(f"proxy settings {sorted(proxy)}: expected {', '.join(PROXY_DEFAULTS)}")
        self.clip_head, self.dino_kind, self.proxy = clip_head, dino_kind, proxy

    @property
    def patch_size(self) -> int:
        """DINO's patch size: the graph's patches (patch centres `y1 + p / 2 + p a`)."""
        return dino_patch_size(self.dino)

    @property
    def patch_sizes(self) -> tuple[int, int]:
        """(CLIP patch size, DINO patch size): a window side must be a multiple of both."""
        return clip_patch_size(self.clip.visual), dino_patch_size(self.dino)

    @property
    def device(self) -> torch.device:
        """Device of the backbone parameters."""
        return next(self.parameters()).device

    def set_classes(self, class_names: Sequence[str]) -> None:
        """Encode the class names (';'-separated aliases) with CLIP; cached in memory and on disk.

        Sets `text_embeddings` [A, E] float32 and `alias_to_class` [A] int64, A = number of aliases.
        """
        self.text_embeddings, self.alias_to_class = text_classifier(
            self.clip,
            self.tokenizer,
            list(class_names),
            self.templates,
            precision=self.precision,
            model_id=self.clip_id,
        )
        self.class_names = list(class_names)
        self.text_blocks = None

    def set_class_groups(self, groups: Sequence[Sequence[str]]) -> list[torch.Tensor]:
        """Several class lists at once (datasets that share a pass): their alias rows one after another.

        Each list is encoded exactly as `set_classes` encodes it, and `forward` scores each list's rows in a
        product of its own, so that a list's score columns equal those of its own run bit for bit (one product
        over all rows may round differently: BLAS blocks by the number of rows). `alias_to_class` and
        `class_names` are left None: the alias-to-class map of each list is returned instead.

        Returns:
            One [A_g] int64 alias-to-class map per list; `forward`'s score columns follow the lists in order.
        """
        blocks = [
            text_classifier(
                self.clip, self.tokenizer, list(names), self.templates, precision=self.precision, model_id=self.clip_id
            )
            for names in groups
        ]
        self.text_blocks = [embeddings for embeddings, _ in blocks]
        self.text_embeddings = torch.cat(self.text_blocks)
        self.alias_to_class, self.class_names = None, None
        return [alias_to_class for _, alias_to_class in blocks]

    @torch.no_grad()
    def features(self, windows: torch.Tensor) -> torch.Tensor:
        """DINO features `[B, D, gh, gw]` float32 (`dino_kind`, unit L2 norm along D) of windows `[B, 3, h, w]`."""
        with autocast_context(self.device, self.precision):
            return dino_features(self.dino, windows, self.dino_kind)

    @torch.no_grad()
    def forward(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch features and initial patch scores of a batch of windows.

        Args:
            windows: [B, 3, h, w] float RGB in [0, 1].

        Returns:
            features: [B, D, gh, gw] float32 DINO features (`dino_kind`), unit L2 norm along D;
            scores: [B, A, gh, gw] float32 cosine similarities in [-1, 1] between the (L2-normalised) CLIP
                patch features of `clip_head` and the alias embeddings, no softmax or temperature (docs/method.md,
                "Pipeline", step 7), computed on the CLIP grid and resized bilinearly to the DINO grid where the
                two differ (docs/method.md, "Two grids").
            gh, gw = ceil(h / p), ceil(w / p), p = DINO's patch size.
        """
        if self.text_embeddings is None:
            raise ValueError("LPOSSBackbones.forward: call set_classes(class_names) first")
        proxyclip = self.clip_head == "proxyclip"
        kinds = (self.dino_kind, self.proxy["proxy_features"]) if proxyclip else (self.dino_kind,)
        with autocast_context(self.device, self.precision):  # both return float32 under autocast too
            maps = dino_feature_maps(self.dino, windows, kinds)  # one DINO pass for the graph and the proxy
            proxy = maps[self.proxy["proxy_features"]] if proxyclip else None
            beta, gamma = self.proxy["proxy_beta"], self.proxy["proxy_gamma"]
            clip_features = dense_clip_features(
                self.clip, windows, self.clip_head, proxy, beta, gamma, self.pos_interpolation
            )
        features = maps[self.dino_kind]  # [B, D, gh, gw]
        clip_features = F.normalize(clip_features, dim=1)  # [B, E, gh', gw'], the CLIP grid (or the proxy's)
        blocks = [self.text_embeddings] if self.text_blocks is None else self.text_blocks
        scores = [torch.einsum("behw,ae->bahw", clip_features, text.to(clip_features.device)) for text in blocks]
        scores = scores[0] if len(scores) == 1 else torch.cat(scores, 1)  # [B, A, gh', gw']
        if scores.shape[-2:] != features.shape[-2:]:  # two grids: the scores go to the graph's (DINO) grid
            scores = F.interpolate(scores, size=features.shape[-2:], mode="bilinear", align_corners=False)
        return features, scores
