"""On-disk cache of CLIP text embeddings, so that a second run skips the prompt encoding.

Encoding the 80 prompt templates of a few dozen class names takes more than a minute on a CPU. An entry is
keyed by everything its values depend on: the model (name, pretrained tag or path, and a SHA-256 of the text
tower's weights, so random-init or changed weights never reuse an entry), the aliases, the filled-in templates,
the compute dtype, the device type and the torch version. The folder is `$LPOSS_CACHE_DIR`, else
`$XDG_CACHE_HOME/lposs`, else `~/.cache/lposs`; `LPOSS_CACHE_DIR=off` disables the cache. An entry that
does not match (other key, corrupt file, wrong shape, non-finite values) is ignored and recomputed.
"""

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lposs.files.atomic import atomic_target

CACHE_ENV = "LPOSS_CACHE_DIR"
FORMAT_VERSION = 1
_OFF = {"off", "0", "false", "no", "none", "disabled"}


def text_cache_dir() -> Path | None:
    """Folder of the text-embedding cache, read from the environment now; None when disabled."""
    setting = os.environ.get(CACHE_ENV, "").strip()
    if setting.lower() in _OFF:
        return None
    if setting:
        return Path(setting).expanduser() / "text_embeddings"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg).expanduser() / "lposs" / "text_embeddings"


@torch.no_grad()
def text_weights_fingerprint(clip_model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer outside the visual tower (`visual.*`): names, dtypes, shapes, bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(clip_model.state_dict().items()):
        if name.startswith("visual."):
            continue  # the image tower does not change text embeddings
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        data = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(data.view(torch.uint8).numpy())
    return digest.hexdigest()


def entry_key(
    model_id: Mapping[str, Any],
    fingerprint: str,
    aliases: Sequence[str],
    templates: Sequence[str],
    dtype: torch.dtype,
    device: torch.device,
) -> dict[str, Any]:
    """Everything a cache entry's embeddings depend on, as a JSON-serialisable dict."""
    return {
        "format": FORMAT_VERSION,
        "model": {str(k): str(v) for k, v in sorted(model_id.items())},
        "text_weights_sha256": fingerprint,
        "aliases": list(aliases),
        "templates": list(templates),
        "dtype": str(dtype),
        "device_type": device.type,
        "torch": torch.__version__,
    }


def _entry_path(folder: Path, key: Mapping[str, Any]) -> tuple[Path, str]:
    text = json.dumps(key, sort_keys=True)
    return folder / f"{hashlib.sha256(text.encode()).hexdigest()[:40]}.pt", text


def load_embeddings(key: Mapping[str, Any]) -> torch.Tensor | None:
    """The cached embeddings [A, E] float32 (CPU) for `key`, or None: no cache, no entry, or an entry not trusted."""
    folder = text_cache_dir()
    if folder is None:
        return None
    path, text = _entry_path(folder, key)
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, corrupt or foreign file: recompute
        return None
    if not isinstance(entry, dict) or entry.get("key") != text:
        return None
    embeddings = entry.get("embeddings")
    rows = len(key["aliases"])
    valid = (
        isinstance(embeddings, torch.Tensor)
        and embeddings.dtype == torch.float32
        and embeddings.ndim == 2
        and embeddings.shape[0] == rows
        and embeddings.shape[1] > 0
        and bool(torch.isfinite(embeddings).all())
    )
    return embeddings if valid else None


def save_embeddings(key: Mapping[str, Any], embeddings: torch.Tensor) -> None:
    """Write an entry durably and atomically (``atomic_target``; mode 0666 minus the umask). A failed write only warns."""
    folder = text_cache_dir()
    if folder is None:
        return
    path, text = _entry_path(folder, key)
    try:
        with atomic_target(path) as temp, open(temp, "wb") as handle:
            torch.save({"key": text, "embeddings": embeddings.detach().float().cpu().contiguous()}, handle)
    except OSError as error:
        message = f"text-embedding cache not written to {folder} ({error}); set {CACHE_ENV}=off to skip it"
        warnings.warn(message, RuntimeWarning, stacklevel=2)
