"""Explicit backbone factories: (name, pretrained, device, dtype) -> model.

`pretrained` is a hub tag (CLIP: an open_clip tag such as 'laion2b_s34b_b88k'; DINO: `true` for timm's
weights of the named model), a local checkpoint path, or None / false / 'null' for random init.
Hub weights come from the local Hugging Face cache when present; otherwise they are downloaded only if
the hub is reachable. Offline, loading fails within seconds with `WeightsUnavailableError`.
"""

import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import timm
import torch
from open_clip.model import set_model_preprocess_cfg
from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH
from torch import nn

from .checks import (
    Device,
    ModelConfigError,
    Pretrained,
    check_clip_name,
    check_clip_pretrained,
    check_clip_tokenizer,
    check_dino_name,
    check_dino_pretrained,
    local_checkpoint,
    normalize_pretrained,
    resolve_dtype,
)
from .timm_clip import is_timm_tower

_TRUE = {"1", "true", "yes", "on"}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached locally nor downloadable (offline)."""


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (not at import time)."""
    if os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ.get("HF_HUB_CACHE") or os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return Path(os.environ.get("HF_HOME", os.path.join(xdg, "huggingface"))).expanduser() / "hub"


def _hub_offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(flag.strip().lower() in _TRUE for flag in flags)


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Quick TCP probe, so that an offline machine fails in seconds instead of the hub client's retry loop."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct probe means nothing; let the client try
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _fetch_hub_file(repo_files: list[tuple[str, str]], what: str, hint: str) -> str:
    """Local path of the first of `repo_files` [(repo_id, filename)]: from the cache, else downloaded."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import RemoteEntryNotFoundError

    cache_dir = _hf_cache_dir()
    for repo_id, filename in repo_files:
        hit = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(hit, str):
            return hit
    reason = _hub_unavailable()
    if reason is not None:
        raise WeightsUnavailableError(
            f"weights for {what} are not in the Hugging Face cache {cache_dir} and {reason}; {hint}"
        )
    for repo_id, filename in repo_files:
        try:
            return hf_hub_download(repo_id, filename, cache_dir=cache_dir, etag_timeout=5)
        except RemoteEntryNotFoundError:
            continue  # try the next candidate file name (e.g. .bin after .safetensors)
        except Exception as error:  # any network / hub failure becomes the one-line error
            first_line = (str(error).splitlines() or [""])[0]
            raise WeightsUnavailableError(
                f"download of {what} failed ({type(error).__name__}: {first_line}); {hint}"
            ) from error
    raise WeightsUnavailableError(f"none of {[f for _, f in repo_files]} exists for {what}; {hint}")


_SAFE_NAMES = {"pytorch_model.bin": "model.safetensors", "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}


def _hub_candidates(repo_id: str, filename: str) -> list[tuple[str, str]]:
    """(repo, filename) pairs to try, the safetensors alternative first, as open_clip and timm do."""
    safe = _SAFE_NAMES.get(filename)
    if safe is None and filename.endswith((".bin", ".pth")):
        safe = filename[:-4] + ".safetensors"
    return [(repo_id, name) for name in ([safe] if safe else []) + [filename]]


def _clip_weights(name: str, pretrained: str) -> tuple[str | None, dict]:
    """(local checkpoint path or None, extra create_model kwargs) for an open_clip tag or path."""
    key = "model.clip.pretrained"
    tags = open_clip.list_pretrained_tags_by_model(name)
    local = local_checkpoint(pretrained, key, is_tag=pretrained in tags)
    if local is not None:
        return local, {}
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    hint = f"download them on a connected machine or set {key}=/path/to/open_clip_pytorch_model.bin"
    what = f"CLIP {name} (pretrained={pretrained})"
    # The tag's training activation is used; open_clip itself only warns on a QuickGELU mismatch.
    extra = {"force_quick_gelu": True} if cfg.get("quick_gelu", False) else {}
    if cfg.get("hf_hub"):
        # open_clip's convention: 'org/repo/' (default file name) or 'org/repo/file.bin'
        repo_id, filename = os.path.split(cfg["hf_hub"])
        files = _hub_candidates(repo_id, filename or "open_clip_pytorch_model.bin")
        return _fetch_hub_file(files, what, hint), extra
    cached = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg.get("url", "missing"))
    if cached.is_file():
        return str(cached), extra
    if _hub_offline() or not _reachable(cfg.get("url", "")):
        raise WeightsUnavailableError(
            f"weights for {what} are not cached in {cached.parent} and the download URL is unreachable; {hint}"
        )
    return None, extra  # open_clip downloads from the URL itself


def _finish(model: nn.Module, device: Device, dtype: str | torch.dtype) -> nn.Module:
    model = model.to(device=device, dtype=resolve_dtype(dtype)).eval()
    return model.requires_grad_(False)


def _hub_unavailable() -> str | None:
    """Why the Hugging Face hub cannot be asked (offline mode, or its endpoint unreachable), or None."""
    if _hub_offline():
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return None if _reachable(endpoint) else f"{endpoint} is unreachable"


def _hub_tokenizer(name: str, repo_id: str) -> str:
    """A Hugging Face tokenizer's source: its cached snapshot folder, else `repo_id` when the hub can be reached."""
    from huggingface_hub import try_to_load_from_cache

    cache_dir = _hf_cache_dir()
    cached = try_to_load_from_cache(repo_id, "tokenizer.json", cache_dir=cache_dir)
    if isinstance(cached, str):
        return os.path.dirname(cached)  # the snapshot folder: no hub round trip when offline
    reason = _hub_unavailable()
    if reason is not None:
        raise WeightsUnavailableError(
            f"model.clip.name={name!r}: its tokenizer {repo_id!r} is not in the Hugging Face cache {cache_dir} and "
            f"{reason}; set model.clip.tokenizer=/path/to/folder (a Hugging Face tokenizer folder with tokenizer.json)"
        )
    return repo_id


def build_tokenizer(name: str, folder: str | None = None) -> Callable:
    """The tokenizer of open_clip model `name`, as `open_clip.get_tokenizer(name)` builds it; a Hugging Face tokenizer
    (SigLIP's) is read from `folder` when given (a local tokenizer folder with tokenizer.json), else from the hub cache
    or the hub, with the model's own context length and cleaning.

    Raises:
        ModelConfigError: a bad folder, or `transformers` missing for a Hugging Face tokenizer.
        WeightsUnavailableError: offline with neither a local folder nor a cached copy (one line).
    """
    check_clip_tokenizer(name, folder)
    text = open_clip.get_model_config(name)["text_cfg"]
    repo_id = text.get("hf_tokenizer_name")
    if not repo_id:
        return open_clip.get_tokenizer(name)
    try:
        from open_clip.tokenizer import HFTokenizer
        from transformers import AutoTokenizer  # noqa: F401 (HFTokenizer imports it when built)
    except ImportError as error:
        raise ModelConfigError(
            f"model.clip.name={name!r}: its tokenizer is Hugging Face's {repo_id!r}, which needs the `transformers` "
            "package (pip install transformers)"
        ) from error
    source = os.path.expanduser(folder) if folder else _hub_tokenizer(name, repo_id)
    return HFTokenizer(
        source,
        context_length=text.get("context_length", DEFAULT_CONTEXT_LENGTH),
        tokenizer_mode=text.get("tokenizer_mode"),
        **text.get("tokenizer_kwargs", {}),
    )


def _set_tower_preprocess(model: nn.Module, name: str, pretrained: Pretrained) -> None:
    """A timm tower's mean / std: the pretrained tag's (open_clip's table), else its timm trunk's `pretrained_cfg`
    (a checkpoint file or random weights; open_clip itself would fall back to OpenAI's constants)."""
    tags = open_clip.list_pretrained_tags_by_model(name)
    source = open_clip.get_pretrained_cfg(name, pretrained) if pretrained in tags else model.visual.trunk.pretrained_cfg
    cfg = dict(model.visual.preprocess_cfg)
    cfg.update(mean=tuple(source["mean"]), std=tuple(source["std"]))
    set_model_preprocess_cfg(model, cfg)


def build_clip(
    name: str,
    pretrained: Pretrained,
    device: Device = "cpu",
    dtype: str | torch.dtype = "float32",
    tokenizer: str | None = None,
) -> tuple[nn.Module, Callable]:
    """Build an open_clip CLIP model in eval mode, and its tokenizer: a ViT of open_clip's own (any patch size) or a
    tower on a timm trunk (EVA02, SigLIP / SigLIP2, PE-Core; docs/method.md, "Other backbones").

    Args:
        name: open_clip model name, e.g. 'ViT-B-16', 'ViT-L-14', 'EVA02-B-16', 'ViT-B-16-SigLIP2', 'PE-Core-B-16'.
        pretrained: open_clip tag (e.g. 'laion2b_s34b_b88k'), local checkpoint path, or None / false / 'null'.
        device: target device.
        dtype: 'float32' | 'float16' | 'bfloat16'; the whole model is cast to it.
        tokenizer: a local Hugging Face tokenizer folder for models with one (SigLIP's), instead of the hub.

    Returns:
        (model, tokenizer); tokenizer maps list[str] -> LongTensor [N, context_length].
    """
    resolve_dtype(dtype)
    check_clip_name(name)
    check_clip_pretrained(name, pretrained)  # one-line errors before anything is read or downloaded
    text_tokenizer = build_tokenizer(name, tokenizer)  # before the weights: offline, the one line comes first
    pretrained = normalize_pretrained(pretrained)
    checkpoint, extra = (None, {}) if pretrained is None else _clip_weights(name, pretrained)
    source = checkpoint if checkpoint is not None else pretrained
    try:
        model = open_clip.create_model(name, pretrained=source, device="cpu", **extra)
    except RuntimeError as error:
        if checkpoint is None:  # open_clip's own URL download failed
            raise WeightsUnavailableError(
                f"download of CLIP {name} (pretrained={pretrained}) failed: {error}"
            ) from error
        raise ValueError(f"model.clip.pretrained={pretrained!r}: cannot load into {name}: {error}") from error
    if is_timm_tower(model.visual):
        _set_tower_preprocess(model, name, pretrained)
    return _finish(model, device, dtype), text_tokenizer


def _dino_weights(name: str, pretrained: str | bool) -> str:
    """Local checkpoint path for timm model `name`: the given path, or timm's hub weights."""
    key = "model.dino.pretrained"
    if pretrained is not True:
        return local_checkpoint(pretrained, key)  # check_dino_pretrained has made sure it exists
    cfg = timm.models.get_pretrained_cfg(name)
    hint = f"download them on a connected machine or set {key}=/path/to/model.safetensors"
    what = f"DINO {name} (pretrained=true)"
    if cfg.hf_hub_id:
        repo_id = cfg.hf_hub_id.split("@")[0]
        files = _hub_candidates(repo_id, cfg.hf_hub_filename or "pytorch_model.bin")
        return _fetch_hub_file(files, what, hint)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
    if not cached.is_file():
        if _hub_offline() or not _reachable(cfg.url):
            raise WeightsUnavailableError(
                f"weights for {what} are not cached in {cached.parent} and {cfg.url} is unreachable; {hint}"
            )
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(cfg.url, str(cached))
    return str(cached)


def build_dino(
    name: str, pretrained: Pretrained, device: Device = "cpu", dtype: str | torch.dtype = "float32"
) -> nn.Module:
    """Build a timm ViT (e.g. 'vit_base_patch16_224.dino', 'vit_base_patch8_224.dino', 'vit_base_patch14_reg4_dinov2.lvd142m',
    DINOv3's 'vit_base_patch16_dinov3.lvd1689m') without head, in eval mode.

    Args:
        name: timm model name, optionally with pretrained tag ('arch.tag').
        pretrained: true (timm's weights for `name`), local checkpoint path, or None / false / 'null'.
        device: target device.
        dtype: 'float32' | 'float16' | 'bfloat16'.

    Returns:
        timm VisionTransformer (DINOv3: timm Eva) with num_classes=0.
    """
    resolve_dtype(dtype)
    check_dino_name(name)
    check_dino_pretrained(name, pretrained)  # one-line errors before anything is read or downloaded
    pretrained = normalize_pretrained(pretrained)
    checkpoint = None if pretrained is None else _dino_weights(name, pretrained)
    kwargs = {} if checkpoint is None else {"pretrained_cfg_overlay": {"file": checkpoint}}
    try:
        model = timm.create_model(name, pretrained=checkpoint is not None, num_classes=0, **kwargs)
    except RuntimeError as error:
        raise ValueError(f"model.dino.pretrained={pretrained!r}: cannot load into {name}: {error}") from error
    return _finish(model, device, dtype)


BUILDERS = {"clip": build_clip, "dino": build_dino}
