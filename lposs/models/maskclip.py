"""MaskCLIP dense patch features and the CLIP text classifier (docs/method.md, "Pipeline", steps 4 and 5).

Works on open_clip ViT CLIP models (`open_clip.transformer.VisionTransformer` visual tower) of any patch size:
ViT-B/16 (the paper's), ViT-L/14, ViT-L/14@336, ViT-B/32...
The open_clip internals used here are checked by `_check_visual_layout`, so a layout change in a
future open_clip fails loudly instead of silently changing the features.
"""

import hashlib
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerScale, VisionTransformer
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch import nn
from tqdm import tqdm

from . import text_cache
from ._image import check_images, pad_and_normalize, tokens_to_map
from ._precision import autocast_context
from .clip_heads import PROXY_BETA, PROXY_GAMMA, check_head, proxyclip_last_block, refined_last_block
from .timm_clip import dense_timm_clip_features, is_timm_tower, timm_patch_size

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Template = str | Callable[[str], str]

# The 80 ImageNet prompt templates of CLIP ('a bad photo of a {}.' ... 'a tattoo of the {}.').
IMAGENET_TEMPLATES: tuple = tuple(OPENAI_IMAGENET_TEMPLATES)
assert len(IMAGENET_TEMPLATES) == 80, "open_clip's OPENAI_IMAGENET_TEMPLATES no longer holds 80 templates"
# Prompt sets selectable by `model.templates`: the paper's 80 ImageNet templates, or one plain prompt
# (faster text encoding for quick experiments and the CPU tests; not the paper's setting).
TEMPLATE_SETS: dict[str, tuple] = {"imagenet80": IMAGENET_TEMPLATES, "single": ("a photo of a {}.",)}

# (id(model), class names, device, dtype, autocast dtype, templates) -> (weakref to model, embeddings, alias_to_class)
_TEXT_CACHE: dict = {}
_TOKENIZER_IDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> describe_tokenizer(...)


def _layout_error(what: str) -> ValueError:
    return ValueError(f"dense_clip_features: unsupported open_clip visual tower, {what}")


def clip_patch_size(visual: nn.Module) -> int:
    """The (square) patch size of an open_clip ViT visual tower: 16 for ViT-B/16, 14 for ViT-L/14, 32 for ViT-B/32
    (and of a timm trunk's tower: 16 for EVA02-B-16, ViT-B-16-SigLIP2, PE-Core-B-16)."""
    if is_timm_tower(visual):
        return timm_patch_size(visual)
    size = tuple(visual.patch_size)
    if len(size) != 2 or size[0] != size[1]:
        raise _layout_error(f"expected a square patch size, got {size}")
    return int(size[0])


def _check_visual_layout(visual: nn.Module) -> None:
    """Raise ValueError unless `visual` has the open_clip ViT layout that MaskCLIP relies on."""
    if not isinstance(visual, VisionTransformer):
        raise _layout_error(f"expected open_clip VisionTransformer, got {type(visual).__name__}")
    patch = clip_patch_size(visual)
    if tuple(visual.conv1.stride) != (patch, patch) or tuple(visual.conv1.kernel_size) != (patch, patch):
        raise _layout_error(f"expected conv1 with kernel and stride {patch} (the patch size)")
    if getattr(visual, "attn_pool", None) is not None or visual.proj is None:
        raise _layout_error("expected no attentional pooler and a `proj` matrix")
    grid = tuple(visual.grid_size)
    if tuple(visual.positional_embedding.shape[:1]) != (grid[0] * grid[1] + 1,):
        raise _layout_error(f"positional_embedding {tuple(visual.positional_embedding.shape)} vs grid {grid} + CLS")
    block = visual.transformer.resblocks[-1]
    attn = getattr(block, "attn", None)
    if not isinstance(attn, nn.MultiheadAttention) or attn.in_proj_weight is None:
        raise _layout_error("last block's `attn` must be nn.MultiheadAttention with a packed in_proj_weight")
    if hasattr(block, "ln_1_kv") or not all(hasattr(block, n) for n in ("ln_1", "ln_2", "mlp")):
        raise _layout_error("last block must have ln_1, ln_2, mlp and no cross-attention")
    for name in ("ls_1", "ls_2"):
        if not isinstance(getattr(block, name, nn.Identity()), (nn.Identity, LayerScale)):
            raise _layout_error(f"last block's {name} must be Identity or LayerScale")


# How the positional embedding is resized to another grid: `size` (this toolkit's, step 4) or `offset` (the baselines'
# repositories: bicubic with scale_factor (g + 0.1) / g0, the rule of facebookresearch/dino).
POS_INTERPOLATIONS = ("size", "offset")


def _clip_positional_embedding(
    visual: VisionTransformer, grid: Sequence[int], interpolation: str = "size"
) -> torch.Tensor:
    """Positional embedding [1 + gh * gw, width] for a patch grid (gh, gw), CLS row first.

    The patch part is resized bicubically (align_corners False) when the grid differs from the pretraining grid:
    to `size=grid` (`interpolation="size"`, docs/method.md, "Pipeline", step 4), or with
    `scale_factor=(g + 0.1) / g0` per axis (`"offset"`, as SCLIP, NACLIP, ClearCLIP and ProxyCLIP do); the CLS row
    is unchanged.
    """
    pos = visual.positional_embedding
    grid0 = tuple(visual.grid_size)
    if tuple(grid) == grid0:
        return pos
    patch_pos = pos[1:].float().reshape(1, grid0[0], grid0[1], -1).permute(0, 3, 1, 2)  # [1, C, gh0, gw0]
    if interpolation == "offset":  # the + 0.1 keeps floor(g0 * factor) == g; the factor also maps the coordinates
        factor = ((grid[0] + 0.1) / grid0[0], (grid[1] + 0.1) / grid0[1])
        patch_pos = F.interpolate(patch_pos, scale_factor=factor, mode="bicubic", align_corners=False)
    else:
        patch_pos = F.interpolate(patch_pos, size=tuple(grid), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)  # [gh * gw, C]
    return torch.cat([pos[:1], patch_pos.to(pos.dtype)], dim=0)


def _run_blocks(transformer: nn.Module, x: torch.Tensor, blocks: Sequence[nn.Module]) -> torch.Tensor:
    """Run `blocks` on batch-first tokens x [B, N, C], honouring the transformer's layout."""
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)  # [N, B, C], what a non-batch-first stack expects
    for block in blocks:
        x = block(x)
    return x if batch_first else x.transpose(0, 1)


def _maskclip_last_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's last block: the value path only, no attention. x [B, N, C] -> [B, N, C]."""
    attn = block.attn
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # [B, N, 3C], packed q, k, v
    v = qkv.chunk(3, dim=-1)[2]
    # Layer scale (Identity for the CLIP models used here) sits where open_clip applies it.
    v = x + block.ls_1(attn.out_proj(v))
    return v + block.ls_2(block.mlp(block.ln_2(v)))


def _check_proxy(head: str, proxy: torch.Tensor | None, batch: int) -> None:
    if head != "proxyclip":
        if proxy is not None:
            raise ValueError(f"dense_clip_features: proxy features are for head='proxyclip', not {head!r}")
        return
    if not isinstance(proxy, torch.Tensor) or proxy.ndim != 4 or proxy.shape[0] != batch:
        shape = tuple(proxy.shape) if isinstance(proxy, torch.Tensor) else proxy
        raise ValueError(f"dense_clip_features: head='proxyclip' needs proxy [{batch}, C, h, w], got {shape}")


@torch.no_grad()
def dense_clip_features(
    clip_model: nn.Module,
    images: torch.Tensor,
    head: str = "maskclip",
    proxy: torch.Tensor | None = None,
    beta: float = PROXY_BETA,
    gamma: float = PROXY_GAMMA,
    pos_interpolation: str = "size",
) -> torch.Tensor:
    """Dense patch features of an open_clip ViT (docs/method.md, "Pipeline", step 4), not normalised.

    Args:
        clip_model: open_clip CLIP model with a ViT visual tower of any square patch size p (any dtype), or with a
            timm trunk (EVA02, SigLIP, PE-Core: `models.timm_clip`, head 'maskclip' only).
        images: [B, 3, H, W] float RGB in [0, 1], any device (moved to the model's); padded with black to a
            multiple of p.
        head: the last block: 'maskclip' (the paper's), 'sclip', 'clearclip', 'naclip' or 'proxyclip'
            (docs/method.md, "Heads").
        proxy: for 'proxyclip' only: [B, C, h, w] proxy features of the same images on any grid (a vision model's,
            e.g. `dino_features(vit, images, "x")`); the output is then on that grid.
        beta, gamma: ProxyCLIP's constants (1.2 and 3.0, its defaults).
        pos_interpolation: 'size' (step 4) or 'offset' (the baselines' (g + 0.1) rule) for grids other than the
            pretraining one.

    Returns:
        [B, E, ceil(H / p), ceil(W / p)] float32 ([B, E, h, w] for 'proxyclip'), E = CLIP embedding dim;
        computed in the model's dtype.
    """
    check_images(images, "dense_clip_features")
    check_head(head)
    _check_proxy(head, proxy, images.shape[0])
    visual = clip_model.visual
    if is_timm_tower(visual):  # EVA02, SigLIP, PE-Core: one reading per pooling kind (models.timm_clip)
        if head != "maskclip":
            raise ValueError(
                f"dense_clip_features: head={head!r} reads open_clip's own ViT blocks; a timm tower "
                "takes head='maskclip' (its own reading, docs/method.md, 'Other backbones')"
            )
        return dense_timm_clip_features(clip_model, images)
    _check_visual_layout(visual)
    weight = visual.conv1.weight
    patch = clip_patch_size(visual)
    x = pad_and_normalize(images.to(weight.device), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, weight.dtype, patch)
    x = visual.conv1(x)  # [B, width, gh, gw]
    grid = tuple(x.shape[-2:])
    x = x.flatten(2).transpose(1, 2)  # [B, gh * gw, width]
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + _clip_positional_embedding(visual, grid, pos_interpolation).to(
        x.dtype
    )  # [B, 1 + gh*gw, width]
    # open_clip's patch dropout is the identity in eval mode, so it is not applied here.
    x = visual.ln_pre(x)
    blocks = visual.transformer.resblocks
    x = _run_blocks(visual.transformer, x, blocks[:-1])
    if head == "proxyclip":
        x = proxyclip_last_block(blocks[-1], x, grid, proxy, beta, gamma)  # [B, h * w, width], no CLS
        return tokens_to_map((visual.ln_post(x) @ visual.proj).float(), tuple(proxy.shape[-2:]))
    if head == "maskclip":
        x = _maskclip_last_block(blocks[-1], x)
    else:
        x = refined_last_block(blocks[-1], x, head, grid)
    x = visual.ln_post(x)
    x = x[:, 1:] @ visual.proj  # drop CLS; [B, gh * gw, E]
    return tokens_to_map(x.float(), grid)


def split_aliases(class_names: Sequence[str]) -> tuple[list[str], list[int]]:
    """Split ';'-separated aliases: returns (aliases, index of the class of each alias)."""
    if isinstance(class_names, str) or len(class_names) == 0:
        raise ValueError(f"class_names: expected a non-empty list of class names, got {class_names!r}")
    aliases, owners = [], []
    for index, name in enumerate(class_names):
        if not isinstance(name, str):
            raise ValueError(f"class_names[{index}]: expected a string, got {name!r}")
        parts = [part.strip() for part in name.split(";")]
        if not all(parts):
            raise ValueError(f"class_names[{index}] = {name!r}: empty alias (aliases are ';'-separated)")
        aliases += parts
        owners += [index] * len(parts)
    return aliases, owners


def describe_tokenizer(tokenizer: Callable) -> str:
    """What a tokenizer's output depends on, for the text caches' keys: its class and context length, and for a
    Hugging Face tokenizer (SigLIP's) a SHA-256 of its whole definition (vocabulary, rules), wherever it was read;
    worked out once per tokenizer object (Gemma's definition is tens of MB)."""
    try:
        return _TOKENIZER_IDS[tokenizer]
    except (KeyError, TypeError):  # TypeError: not weakly referenceable, described anew each time
        pass
    parts = [type(tokenizer).__qualname__, str(getattr(tokenizer, "context_length", None))]
    backend = getattr(getattr(tokenizer, "tokenizer", None), "backend_tokenizer", None)
    if backend is not None:
        parts.append(hashlib.sha256(backend.to_str().encode()).hexdigest())
        parts.append(str(getattr(tokenizer, "strip_sep_token", False)))
        parts.append(getattr(getattr(tokenizer, "clean_fn", None), "__name__", ""))
    described = "|".join(parts)
    try:
        _TOKENIZER_IDS[tokenizer] = described
    except TypeError:
        pass
    return described


def _fill(template: Template, text: str) -> str:
    return template(text) if callable(template) else template.format(text)


def clear_text_cache() -> None:
    """Forget all text classifiers cached in memory (the on-disk cache is left alone)."""
    _TEXT_CACHE.clear()


def _show_progress(n_prompts: int, batch_size: int) -> bool:
    """A progress bar when there is more than one batch to wait for, on the first process only."""
    first_rank = not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )
    return first_rank and n_prompts > batch_size


@torch.no_grad()
def _encode_aliases(
    clip_model: nn.Module, tokenizer: Callable, aliases: list[str], templates: Sequence[Template], batch_size: int
) -> torch.Tensor:
    """Mean of L2-normalised template embeddings per alias, L2-normalised: [A, E] float32."""
    device = next(clip_model.parameters()).device
    prompts = [_fill(t, alias) for alias in aliases for t in templates]  # alias-major
    chunks = []
    show = _show_progress(len(prompts), batch_size)
    with tqdm(total=len(prompts), desc="CLIP text encoding", unit="prompt", disable=not show) as bar:
        for start in range(0, len(prompts), batch_size):
            tokens = tokenizer(prompts[start : start + batch_size]).to(device)
            chunks.append(F.normalize(clip_model.encode_text(tokens).float(), dim=-1))
            bar.update(len(tokens))
    per_prompt = torch.cat(chunks).view(len(aliases), len(templates), -1)  # [A, T, E]
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


def _cached_or_encoded(
    clip_model: nn.Module,
    tokenizer: Callable,
    aliases: list[str],
    templates: Sequence[Template],
    batch_size: int,
    precision: torch.dtype | None,
    model_id: Mapping[str, Any] | None,
) -> torch.Tensor:
    """Embeddings [A, E] float32 on the model's device: from the on-disk cache when an entry matches, else encoded
    (under autocast in `precision`, if given) and stored."""
    param = next(clip_model.parameters())
    key = None
    if text_cache.text_cache_dir() is not None:
        model_id = model_id if model_id is not None else {"class": type(clip_model).__qualname__}
        key = text_cache.entry_key(
            {**model_id, "tokenizer": describe_tokenizer(tokenizer)},
            text_cache.text_weights_fingerprint(clip_model),
            aliases,
            [_fill(t, "{}") for t in templates],
            precision or param.dtype,
            param.device,
        )
        cached = text_cache.load_embeddings(key)
        if cached is not None:
            return cached.to(param.device)
    with autocast_context(param.device, precision):
        embeddings = _encode_aliases(clip_model, tokenizer, aliases, templates, batch_size)
    if key is not None:
        text_cache.save_embeddings(key, embeddings)
    return embeddings


def text_classifier(
    clip_model: nn.Module,
    tokenizer: Callable,
    class_names: Sequence[str],
    templates: Sequence[Template] = IMAGENET_TEMPLATES,
    batch_size: int = 256,
    precision: torch.dtype | None = None,
    model_id: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP text embeddings, one row per alias (docs/method.md, "Pipeline", step 5); cached in memory and on disk.

    Args:
        clip_model: open_clip CLIP model (`encode_text`).
        tokenizer: open_clip tokenizer, list[str] -> LongTensor [N, context_length].
        class_names: class names; a name may hold aliases separated by ';'.
        templates: prompt templates, callables or '{}' format strings; default the 80 of CLIP.
        batch_size: prompts encoded per forward pass (a progress bar shows when there is more than one).
        precision: bfloat16 / float16 to encode under torch.autocast; None or float32: the model's own dtype.
        model_id: how the model was built, e.g. {'name': 'ViT-B-16', 'pretrained': 'laion2b_s34b_b88k'}; part of
            the on-disk cache key (with a hash of the text weights, see `models.text_cache`).

    Returns:
        embeddings [A, E] float32, L2-normalised rows, on the model's device;
        alias_to_class [A] int64, the class index of each alias row.
        The tensors are shared with the cache: do not modify them in place.
    """
    aliases, owners = split_aliases(class_names)
    if len(templates) == 0:
        raise ValueError("text_classifier: templates is empty")
    param = next(clip_model.parameters())
    filled = tuple(_fill(t, "{}") for t in templates)
    # Tensor versions change with every in-place update, so weights changed after a first call never hit.
    versions = tuple(p._version for p in clip_model.parameters())
    key = (id(clip_model), versions, tuple(class_names), str(param.device), param.dtype, precision, filled)
    key += (describe_tokenizer(tokenizer),)
    hit = _TEXT_CACHE.get(key)
    if hit is not None and hit[0]() is clip_model:
        return hit[1], hit[2]
    embeddings = _cached_or_encoded(clip_model, tokenizer, aliases, templates, batch_size, precision, model_id)
    alias_to_class = torch.tensor(owners, dtype=torch.long, device=param.device)
    _TEXT_CACHE[key] = (weakref.ref(clip_model), embeddings, alias_to_class)
    return embeddings, alias_to_class
