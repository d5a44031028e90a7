"""Checks of the `model` config section, before any weights are built or downloaded.

Every error is one line naming the key, the value and what is expected. The facts come from open_clip's and
timm's own registries (model configs, pretrained tags) and, for timm, from building the model on the `meta`
device (no memory, no weights), so nothing here goes stale when either library adds models.
"""

import difflib
import functools
import math
import os
from collections.abc import Mapping
from typing import Any

import open_clip
import timm
import torch
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer

from .clip_heads import CLIP_HEADS
from .dino import DINO_FEATURES, check_dino_layout, dino_patch_size
from .maskclip import TEMPLATE_SETS
from .timm_clip import check_timm_trunk

Pretrained = str | bool | None
Device = str | torch.device

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_CHECKPOINT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".ckpt", ".npz")
_TRUE = {"1", "true", "yes", "on"}
_NULL = {"", "null", "none", "false", "0", "no", "off"}


class ModelConfigError(ValueError):
    """A `model.*` config value that cannot work (unknown model, a crop the patch sizes do not divide, missing weights...)."""


class CheckpointNotFoundError(ModelConfigError, FileNotFoundError):
    """`pretrained` names a local checkpoint file that does not exist."""


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' | 'float16' | 'bfloat16' (or the torch dtype itself) -> torch.dtype."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ModelConfigError(f"model.dtype={dtype!r}: expected one of {', '.join(DTYPES)}")


def normalize_pretrained(pretrained: Pretrained, key: str = "pretrained") -> Pretrained:
    """Map config spellings to True (default hub weights), None (random init) or a string (tag or path)."""
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True:
        return True
    if not isinstance(pretrained, (str, os.PathLike)):
        raise ModelConfigError(f"{key}={pretrained!r}: expected a tag, a path, true or null")
    text = os.fspath(pretrained).strip()
    if text.lower() in _NULL:
        return None
    return True if text.lower() in _TRUE else text


def local_checkpoint(pretrained: str, key: str, is_tag: bool = False) -> str | None:
    """The file `pretrained` names; None if it is not path-like. CheckpointNotFoundError if it is but is missing."""
    if is_tag:
        return None  # a known hub tag wins over a file of the same name, as in open_clip
    path = os.path.expanduser(pretrained)
    if os.path.isfile(path):
        return path
    path_like = "/" in pretrained or os.sep in pretrained or pretrained.startswith(("~", "."))
    if path_like or pretrained.endswith(_CHECKPOINT_SUFFIXES):
        raise CheckpointNotFoundError(f"{key}={pretrained!r}: checkpoint file not found")
    return None


def check_dtype(dtype: Any, device: Device) -> torch.dtype:
    """`model.dtype` for `device`: float16 is refused on a CPU, where it runs about 5x slower than float32."""
    resolved = resolve_dtype(dtype)
    if device == "auto":  # the config's default: CUDA when there is one
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if resolved is torch.float16 and torch.device(device).type == "cpu":
        raise ModelConfigError(
            "model.dtype='float16' on the CPU: half precision runs about 5x slower than float32 there; "
            "use model.dtype=float32 (or bfloat16) on a CPU, float16 on a GPU"
        )
    return resolved


def _native_vit(name: str) -> bool:
    vision = open_clip.get_model_config(name)["vision_cfg"]
    plain = "timm_model_name" not in vision and not vision.get("attentional_pool")
    return plain and isinstance(vision.get("patch_size"), int)


def usable_clip_models() -> list[str]:
    """open_clip model names with their own plain ViT visual tower (what the heads read), any patch size."""
    return [name for name in open_clip.list_models() if _native_vit(name)]


def clip_patch_size(name: str) -> int:
    """The patch size of open_clip model `name`'s visual tower, from its config or its timm trunk (no weights)."""
    vision = open_clip.get_model_config(name)["vision_cfg"]
    if "timm_model_name" in vision:
        return int(_timm_trunk(vision["timm_model_name"], vision.get("timm_pool", "avg")).patch_embed.patch_size[0])
    return int(vision["patch_size"])


@functools.lru_cache(maxsize=8)
def _timm_trunk(name: str, pool: str) -> torch.nn.Module:
    """A CLIP tower's timm trunk built on the meta device as open_clip builds it (its pooling), no weights."""
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, num_classes=0, global_pool=pool)
    except Exception:  # a model that cannot be built on meta: build it on the CPU, still without weights
        return timm.create_model(name, pretrained=False, num_classes=0, global_pool=pool)


def _check_timm_clip(name: str, vision: Mapping[str, Any]) -> None:
    """ModelConfigError unless open_clip's TimmModel tower of `name` has a trunk that `models.timm_clip` reads."""
    trunk_name, pool = vision["timm_model_name"], vision.get("timm_pool", "avg")
    usable = "e.g. EVA02-B-16, ViT-B-16-SigLIP2, PE-Core-B-16, or open_clip's own ViT-B-16"
    if pool in ("abs_attn", "rot_attn") or vision.get("timm_proj") == "mlp":
        raise ModelConfigError(
            f"model.clip.name={name!r}: open_clip's own pooling / MLP head on timm's "
            f"{trunk_name!r} is not read here; {usable}"
        )
    try:
        check_timm_trunk(_timm_trunk(trunk_name, pool))
    except ValueError as error:
        raise ModelConfigError(
            f"model.clip.name={name!r}: its visual tower is timm's {trunk_name!r}: {error}; {usable}"
        ) from error


def clip_tokenizer_repo(name: str) -> str | None:
    """The Hugging Face tokenizer repo of open_clip model `name` (SigLIP's), None for open_clip's own tokenizers."""
    return open_clip.get_model_config(name)["text_cfg"].get("hf_tokenizer_name") or None


def check_clip_tokenizer(name: str, folder: Any) -> None:
    """ModelConfigError unless `model.clip.tokenizer` is null, or a folder with tokenizer.json for a model whose
    tokenizer is a Hugging Face one (SigLIP's)."""
    key = "model.clip.tokenizer"
    if folder is None:
        return
    if not isinstance(folder, (str, os.PathLike)) or not os.fspath(folder).strip():
        raise ModelConfigError(f"{key}={folder!r}: expected null or a Hugging Face tokenizer folder")
    if clip_tokenizer_repo(name) is None:
        raise ModelConfigError(
            f"{key}={folder!r}: {name} uses open_clip's own tokenizer, not a Hugging Face one; leave it null"
        )
    path = os.path.expanduser(os.fspath(folder))
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        raise ModelConfigError(f"{key}={folder!r}: expected a Hugging Face tokenizer folder holding tokenizer.json")


def check_clip_name(name: Any) -> None:
    """ModelConfigError unless `name` is an open_clip model whose visual tower is read here: open_clip's own plain ViT
    (any patch size), or a timm trunk of `models.timm_clip` (EVA02, SigLIP / SigLIP2, PE-Core)."""
    key = "model.clip.name"
    known = open_clip.list_models()
    if not isinstance(name, str) or name not in known:
        close = difflib.get_close_matches(str(name), known, n=5, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else f"usable: {', '.join(usable_clip_models())}"
        raise ModelConfigError(f"{key}={name!r}: unknown open_clip model; {hint}")
    vision = open_clip.get_model_config(name)["vision_cfg"]
    usable = f"e.g. {', '.join(('ViT-B-16', 'ViT-L-14', 'ViT-L-14-336', 'ViT-B-32'))}"
    if "timm_model_name" in vision:
        _check_timm_clip(name, vision)
        return
    patch = vision.get("patch_size")
    if not isinstance(patch, int):
        raise ModelConfigError(f"{key}={name!r}: no patch size (not a ViT); expected an open_clip ViT, {usable}")
    if vision.get("attentional_pool"):
        raise ModelConfigError(f"{key}={name!r}: attentional pooler, expected a plain ViT; {usable}")


def is_timm_clip(name: str) -> bool:
    """True when open_clip model `name` has a timm trunk as its visual tower (EVA02, SigLIP, PE-Core...)."""
    return "timm_model_name" in open_clip.get_model_config(name)["vision_cfg"]


def check_clip_head(name: str, head: str) -> None:
    """ModelConfigError unless `head` can read `name`'s tower: the other heads read open_clip's own ViT blocks only."""
    if head != "maskclip" and is_timm_clip(name):
        raise ModelConfigError(
            f"model.clip.head={head!r}: reads open_clip's own ViT blocks, and {name}'s visual tower is a timm trunk; "
            "use model.clip.head=maskclip (its own reading, docs/method.md, 'Other backbones') or a plain ViT"
        )


def check_clip_pretrained(name: str, pretrained: Pretrained) -> None:
    """ModelConfigError unless `pretrained` is null, an open_clip tag of `name` or an existing checkpoint file."""
    key = "model.clip.pretrained"
    value = normalize_pretrained(pretrained, key)
    if value is None:
        return
    tags = open_clip.list_pretrained_tags_by_model(name)
    listed = f"tags of {name}: {', '.join(tags)}" if tags else f"open_clip has no weights for {name}"
    if value is True:
        raise ModelConfigError(f"{key}=true: expected an open_clip tag ({listed}), a checkpoint path or null")
    if value not in tags and local_checkpoint(value, key) is None:
        raise ModelConfigError(
            f"{key}={value!r}: neither an open_clip tag of {name} nor a file; {listed}; or give a checkpoint path"
        )


def _dino_examples() -> str:
    dinov3 = timm.list_pretrained("vit_base_patch16_dinov3.*")[:1]
    return ", ".join(timm.list_pretrained("vit_*.dino") + timm.list_pretrained("vit_*_dinov2.*")[:2] + dinov3)


@functools.lru_cache(maxsize=8)
def _meta_model(name: str) -> torch.nn.Module:
    """The timm model `name` built on the meta device: its modules and shapes, no memory and no weights (cached:
    the name check and the crop check both read it)."""
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, num_classes=0)
    except Exception:  # a model that cannot be built on meta: build it on the CPU, still without weights
        return timm.create_model(name, pretrained=False, num_classes=0)


def check_dino_name(name: Any) -> None:
    """ModelConfigError unless `name` is a timm VisionTransformer (any square patch size) or a DINOv3 Eva with the
    layout read here."""
    key = "model.dino.name"
    if not isinstance(name, str) or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models() + timm.list_pretrained(), n=5, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else f"e.g. {_dino_examples()}"
        raise ModelConfigError(f"{key}={name!r}: unknown timm model; {hint}")
    arch, _, tag = name.partition(".")
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        tags = [known.partition(".")[2] for known in timm.list_pretrained(f"{arch}.*")]
        raise ModelConfigError(f"{key}={name!r}: timm has no tag {tag!r} for {arch}; its tags: {', '.join(tags)}")
    try:
        model = _meta_model(name)
    except Exception as error:
        raise ModelConfigError(f"{key}={name!r}: timm cannot build it ({type(error).__name__}: {error})") from error
    if not isinstance(model, (VisionTransformer, Eva)):  # Eva: DINOv3 (lposs/models/dinov3.py)
        expected = f"expected a timm VisionTransformer or DINOv3, e.g. {_dino_examples()}"
        raise ModelConfigError(f"{key}={name!r}: a {type(model).__name__}, not a ViT; {expected}")
    try:
        check_dino_layout(model)
    except ValueError as error:
        raise ModelConfigError(f"{key}={name!r}: {error}") from error


def dino_patch_size_of(name: str) -> int:
    """The patch size of timm model `name` (built on the meta device: no memory, no weights)."""
    return dino_patch_size(_meta_model(name))


def check_dino_pretrained(name: str, pretrained: Pretrained) -> None:
    """ModelConfigError unless `pretrained` is null, true (timm has hub weights for `name`) or an existing file."""
    key = "model.dino.pretrained"
    value = normalize_pretrained(pretrained, key)
    if value is None:
        return
    if value is True:
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None or not (cfg.hf_hub_id or cfg.url):
            raise ModelConfigError(
                f"{key}=true: timm has no pretrained weights for {name!r}; give a checkpoint path, null, "
                f"or a model name with weights, e.g. {_dino_examples()}"
            )
        return
    if local_checkpoint(value, key) is None:
        raise ModelConfigError(f"{key}={value!r}: expected true (timm's weights of the name), a file path or null")


def config_value(model_cfg: Any, dotted: str) -> Any:
    """model_cfg['a']['b'] for dotted 'a.b' (dicts and omegaconf DictConfigs); ModelConfigError if missing."""
    node = model_cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) and not hasattr(node, "keys"):
            raise ModelConfigError(f"model config: expected a mapping above key 'model.{dotted}', got {node!r}")
        if part not in node:
            raise ModelConfigError(f"model config: missing key 'model.{dotted}'")
        node = node[part]
    return node


def optional_value(model_cfg: Any, dotted: str, default: Any) -> Any:
    """`config_value`, or `default` when the key (or its section) is absent."""
    try:
        return config_value(model_cfg, dotted)
    except ModelConfigError:
        return default


def check_choice(dotted: str, value: Any, choices: tuple) -> None:
    """ModelConfigError naming `model.<dotted>`, the value and the choices, unless `value` is one of `choices`."""
    if not isinstance(value, str) or value not in choices:
        raise ModelConfigError(f"model.{dotted}={value!r}: expected one of {', '.join(choices)}")


def check_crop(crop: Any, model_cfg: Any) -> None:
    """ModelConfigError unless the window side `crop` is 0 (the whole image, floor-cropped to a multiple of both patch
    sizes when it is run) or a multiple of both backbones' patch sizes (no weights read).

    Both grids of a window (crop / CLIP patch, crop / DINO patch) must cover it exactly, e.g. 224 for ViT-B/16 with
    DINO ViT-B/8 or DINOv2 /14, 224 or 448 for ViT-B/32 with DINOv2 /14 (a multiple of 224).
    """
    clip_name, dino_name = config_value(model_cfg, "clip.name"), config_value(model_cfg, "dino.name")
    patches = {f"model.clip.name={clip_name!r}": clip_patch_size(clip_name)}
    patches[f"model.dino.name={dino_name!r}"] = dino_patch_size_of(dino_name)
    multiple = math.lcm(*patches.values())
    if not isinstance(crop, int) or isinstance(crop, bool) or crop < 0 or crop % multiple:
        names = " and ".join(f"{key} ({patch})" for key, patch in patches.items())
        raise ModelConfigError(
            f"crop={crop!r}: expected 0 (the whole image) or a multiple of the patch sizes of {names}, i.e. of {multiple} "
            f"(e.g. {max(1, round(224 / multiple)) * multiple})"
        )


def check_model_config(model_cfg: Any, device: Device, crop: int | None = None) -> None:
    """Check the `model` config section for `device` (and the window side `crop`) without loading or downloading
    any weights.

    Args:
        model_cfg: mapping with clip.name, clip.pretrained, dino.name, dino.pretrained, dtype, optional templates,
            optional clip.head, clip.proxy_features, clip.tokenizer and dino.features.
        device: where the backbones will run ('cpu', 'cuda', 'cuda:1' or a torch.device).
        crop: the config's `crop`, if given: it must be a multiple of both patch sizes (`check_crop`).

    Raises:
        ModelConfigError: one line naming the first bad key, its value and what is expected.
    """
    clip_name, dino_name = config_value(model_cfg, "clip.name"), config_value(model_cfg, "dino.name")
    check_choice("clip.head", optional_value(model_cfg, "clip.head", "maskclip"), CLIP_HEADS)
    check_choice("dino.features", optional_value(model_cfg, "dino.features", "v"), DINO_FEATURES)
    check_choice("clip.proxy_features", optional_value(model_cfg, "clip.proxy_features", "x"), DINO_FEATURES)
    check_clip_name(clip_name)
    check_clip_head(clip_name, optional_value(model_cfg, "clip.head", "maskclip"))
    check_clip_pretrained(clip_name, config_value(model_cfg, "clip.pretrained"))
    check_clip_tokenizer(clip_name, optional_value(model_cfg, "clip.tokenizer", None))
    check_dino_name(dino_name)
    check_dino_pretrained(dino_name, config_value(model_cfg, "dino.pretrained"))
    check_dtype(config_value(model_cfg, "dtype"), device)
    templates = model_cfg.get("templates", "imagenet80")
    if templates not in TEMPLATE_SETS:
        raise ModelConfigError(f"model.templates={templates!r}: expected one of {', '.join(TEMPLATE_SETS)}")
    if crop is not None:
        check_crop(crop, model_cfg)
