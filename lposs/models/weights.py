"""Where the weights of a model config are, without building the models (the reproduce tool's readiness check)."""

from __future__ import annotations

from typing import Any

from .checks import (
    ModelConfigError,
    check_clip_name,
    check_clip_pretrained,
    check_dino_name,
    check_dino_pretrained,
    config_value,
    normalize_pretrained,
)
from .factory import WeightsUnavailableError, _clip_weights, _dino_weights

__all__ = ["missing_weights"]


def missing_weights(model_cfg: Any) -> list[str]:
    """One line per backbone of ``model_cfg`` (the config's ``model`` section) whose weights cannot be had.

    Weights already in the caches (or at a local path) count as present; on a connected machine a missing file is
    downloaded, as the run would do. Random weights (``pretrained: null``) need nothing.

    Returns:
        ``[]`` when both backbones can be built, else one line each naming the model and how to supply weights.
    """
    lines = []
    for kind, check_name, check_pretrained, locate in (
        ("clip", check_clip_name, check_clip_pretrained, _clip_weights),
        ("dino", check_dino_name, check_dino_pretrained, _dino_weights),
    ):
        name, pretrained = config_value(model_cfg, f"{kind}.name"), config_value(model_cfg, f"{kind}.pretrained")
        try:
            check_name(name)
            check_pretrained(name, pretrained)
            pretrained = normalize_pretrained(pretrained)
            if pretrained is not None:
                locate(name, pretrained)
        except (WeightsUnavailableError, ModelConfigError) as error:
            lines.append(str(error).splitlines()[0])
    return lines
