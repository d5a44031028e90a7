"""DINO patch features of the last block (docs/method.md, "Pipeline", step 6) from a timm VisionTransformer.

The value part of the last attention's qkv output is the paper's; its key or query part (`k`, `q`, like the paper
code's `enc_type_feats`) or the last block's output after the final norm (`x`, as DINO's and DINOv2's
`get_intermediate_layers` return it, and as ProxyCLIP reads its proxy) can be used instead (`model.dino.features`).

Any patch size works: DINO ViT-S/16, B/16, S/8, B/8 and DINOv2 S/B/L/14 with or without registers; DINOv3 (timm's
`Eva` with RoPE) goes to `dinov3.py`. Prefix tokens (CLS and registers) are dropped. The token embedding is computed
here rather than by timm's `forward_features`, because for patch grids other than the pretraining one each model's
authors resize the positional embedding their own way (`positional_resize_rule`), which timm does not reproduce for
all of them. The timm internals used are checked by `_check_vit_layout`, so a layout change in a future timm fails
loudly.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ._image import check_images, pad_and_normalize, tokens_to_map
from .dinov3 import check_dinov3_layout, dinov3_feature_maps, is_dinov3

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The feature kinds: a part of the last block's qkv output (index = position in timm's packed (q, k, v) layout),
# or `x`, the last block's output after the final norm.
DINO_FEATURES = ("v", "k", "q", "x")
_QKV_INDEX = {"q": 0, "k": 1, "v": 2}


def _layout_error(what: str) -> ValueError:
    return ValueError(f"dino_features: unsupported timm model, {what}")


def dino_patch_size(vit: nn.Module) -> int:
    """The (square) patch size of a timm ViT: 16 for DINO ViT-B/16, 8 for ViT-B/8, 14 for DINOv2."""
    size = tuple(vit.patch_embed.patch_size)
    if len(size) != 2 or size[0] != size[1]:
        raise _layout_error(f"expected a square patch size, got {size}")
    return int(size[0])


def _check_vit_layout(vit: nn.Module) -> None:
    """Raise ValueError unless `vit` has the timm ViT layout the features rely on."""
    if not isinstance(vit, VisionTransformer):
        raise _layout_error(f"expected timm VisionTransformer, got {type(vit).__name__}")
    patch = dino_patch_size(vit)
    proj = getattr(vit.patch_embed, "proj", None)
    if (
        not isinstance(proj, nn.Conv2d)
        or tuple(proj.stride) != (patch, patch)
        or tuple(proj.kernel_size) != (patch,) * 2
    ):
        raise _layout_error(f"expected patch_embed.proj to be a Conv2d with kernel and stride {patch}")
    if vit.pos_embed is None:
        raise _layout_error("expected an absolute positional embedding (pos_embed)")
    prefix = (vit.cls_token is not None) + (vit.reg_token.shape[1] if vit.reg_token is not None else 0)
    if prefix != vit.num_prefix_tokens:  # e.g. DeiT's distillation token, which `_dino_tokens` does not build
        raise _layout_error(
            f"expected {vit.num_prefix_tokens} prefix tokens from cls_token and reg_token, got {prefix}"
        )
    qkv = getattr(getattr(vit.blocks[-1], "attn", None), "qkv", None)
    if not isinstance(qkv, nn.Linear) or qkv.out_features != 3 * vit.embed_dim:
        raise _layout_error(f"blocks[-1].attn.qkv must be nn.Linear with out_features {3 * vit.embed_dim}")


def check_dino_layout(vit: nn.Module) -> None:
    """Raise ValueError unless `vit` is a timm ViT (DINO, DINOv2) or a timm Eva with DINOv3's layout that the
    features can read."""
    if is_dinov3(vit):
        check_dinov3_layout(vit)
    else:
        _check_vit_layout(vit)


def positional_resize_rule(vit: nn.Module) -> tuple[float, bool]:
    """(offset, antialias) of the bicubic resize of the patch positional embedding, as the model's authors do it.

    DINO (facebookresearch/dino `interpolate_pos_encoding`) and the original DINOv2 models (facebookresearch/dinov2
    hub: `interpolate_offset=0.1`, `interpolate_antialias=False`): scale factor `(g + 0.1) / g0`, the 0.1 avoiding
    floating-point rounding of the output size, no antialias. The DINOv2 models with registers (hub:
    `interpolate_offset=0.0`, `interpolate_antialias=True`): the output size itself, antialiased.
    """
    return (0.0, True) if getattr(vit, "reg_token", None) is not None else (0.1, False)


def _dino_positional_embedding(vit: VisionTransformer, grid: Sequence[int]) -> torch.Tensor:
    """Positional embedding [1, P + gh * gw, D] for patch grid (gh, gw); P = prefix rows in pos_embed.

    Resized by `positional_resize_rule` in float32, as the authors' code; timm's `resample_abs_pos_embed`
    (dynamic_img_size=True) always uses `size=` with antialias, which differs from DINO's and the original DINOv2's.
    """
    pos = vit.pos_embed
    grid0 = tuple(vit.patch_embed.grid_size)
    if tuple(grid) == grid0:
        return pos
    n_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
    dim = pos.shape[-1]
    patch_pos = pos[:, n_prefix:].float().reshape(1, grid0[0], grid0[1], dim).permute(0, 3, 1, 2)  # [1, D, gh0, gw0]
    offset, antialias = positional_resize_rule(vit)
    if offset:  # reference quirk (DINO, original DINOv2): a scale factor of (g + 0.1) / g0, not the size g
        scale = ((grid[0] + offset) / grid0[0], (grid[1] + offset) / grid0[1])
        resize = {"scale_factor": scale}
    else:
        resize = {"size": tuple(grid)}
    patch_pos = F.interpolate(patch_pos, mode="bicubic", align_corners=False, antialias=antialias, **resize)
    if tuple(patch_pos.shape[-2:]) != tuple(grid):
        raise RuntimeError(f"positional embedding resized to {tuple(patch_pos.shape[-2:])}, expected {tuple(grid)}")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)  # [1, gh * gw, D]
    return torch.cat([pos[:, :n_prefix], patch_pos.to(pos.dtype)], dim=1)


def _dino_tokens(vit: VisionTransformer, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Input tokens of the first block, as timm's ViT builds them but with the authors' interpolation.

    Args:
        x: [B, 3, H, W] normalised, H and W multiples of the patch size, in the model's dtype.

    Returns:
        tokens [B, num_prefix_tokens + gh * gw, D] (CLS, registers, patches) and the patch grid (gh, gw).
    """
    x = vit.patch_embed.proj(x)  # [B, D, gh, gw]
    grid = (x.shape[-2], x.shape[-1])
    x = vit.patch_embed.norm(x.flatten(2).transpose(1, 2))  # [B, gh * gw, D]
    prefix = [t.expand(x.shape[0], -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
    pos = _dino_positional_embedding(vit, grid).to(x.dtype)
    if vit.no_embed_class:
        # timm folds DINOv2's CLS position into cls_token; registers get no position, as in DINOv2
        x = torch.cat(prefix + [x + pos], dim=1)
    else:
        x = torch.cat(prefix + [x], dim=1) + pos
    # pos_drop / patch_drop are identities in eval mode and are not applied.
    return vit.norm_pre(x), grid


def _check_kinds(kinds: Sequence[str]) -> None:
    for kind in kinds:
        if kind not in DINO_FEATURES:
            raise ValueError(f"DINO features {kind!r}: expected one of {', '.join(DINO_FEATURES)}")


@torch.no_grad()
def dino_feature_maps(vit: nn.Module, images: torch.Tensor, kinds: Sequence[str]) -> dict[str, torch.Tensor]:
    """Several feature kinds of `dino_features` from one forward pass: {kind: [B, D, gh, gw]}.

    Each map equals `dino_features(vit, images, kind)` bit for bit (the same operations run).
    """
    check_images(images, "dino_features")
    _check_kinds(kinds)
    if is_dinov3(vit):  # RoPE instead of a positional embedding: lposs/models/dinov3.py
        return dinov3_feature_maps(vit, images, kinds)
    _check_vit_layout(vit)
    weight = vit.patch_embed.proj.weight
    x = pad_and_normalize(images.to(weight.device), IMAGENET_MEAN, IMAGENET_STD, weight.dtype, dino_patch_size(vit))
    tokens, grid = _dino_tokens(vit, x)
    captured: list[torch.Tensor] = []
    handle = vit.blocks[-1].attn.qkv.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        # The whole block stack runs, as in the reference; the final norm cannot change the hooked qkv.
        out = vit.blocks(tokens)  # [B, N, D]
    finally:
        handle.remove()
    qkv = captured[-1]  # [B, N, 3 * D], laid out as (3, heads, head_dim) on the last axis
    maps = {}
    for kind in dict.fromkeys(kinds):
        if kind == "x":  # get_intermediate_layers(x, 1)[0]: the final norm of the last block's output
            part = vit.norm(out)
        else:
            part = qkv.reshape(qkv.shape[0], qkv.shape[1], 3, -1)[:, :, _QKV_INDEX[kind]]  # [B, N, D], heads concat.
        part = F.normalize(part[:, vit.num_prefix_tokens :].float(), dim=-1)  # drop CLS / registers
        maps[kind] = tokens_to_map(part, grid)
    return maps


def dino_features(vit: nn.Module, images: torch.Tensor, kind: str = "v") -> torch.Tensor:
    """L2-normalised patch features of a timm DINO / DINOv2 / DINOv3 ViT (docs/method.md, "Pipeline", step 6).

    Args:
        vit: timm VisionTransformer of any square patch size p (any dtype), e.g. DINO ViT-B/16, ViT-B/8 or DINOv2,
            or a timm Eva with DINOv3's layout (`dinov3.py`: RoPE, k and q before it, the model's own mean / std).
        images: [B, 3, H, W] float RGB in [0, 1], any device (moved to the model's); padded with black to a
            multiple of p.
        kind: 'v' (the paper's), 'k' or 'q': that part of the last block's qkv output, heads concatenated;
            'x': the last block's output after the final norm. Prefix tokens (CLS, registers) are dropped.

    Returns:
        [B, D, ceil(H / p), ceil(W / p)] float32 on the model's grid, unit L2 norm along D (D = embed dim).
    """
    return dino_feature_maps(vit, images, (kind,))[kind]


def dino_value_features(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """`dino_features(vit, images, "v")`: the paper's value features, [B, D, gh, gw] float32, unit L2 norm along D."""
    return dino_features(vit, images, "v")
