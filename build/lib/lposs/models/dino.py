"""DINO features of the last block (docs/method.md, "Pipeline", step 6) from a timm VisionTransformer.

The value part of the last attention's qkv output is the paper's; its key or query part can be used instead
(`model.dino.features`), like the paper code's `enc_type_feats`.

The token embedding is computed here rather than by timm's `forward_features`, because for patch grids
other than the pretraining one the DINO reference (facebookresearch/dino) resizes the positional
embedding with its own `scale_factor` rule, which timm does not reproduce. The timm internals used
are checked by `_check_vit_layout`, so a layout change in a future timm fails loudly.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ._image import PATCH_SIZE, check_images, pad_and_normalize, tokens_to_map

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Which part of the last block's qkv output is the feature; index = position in timm's packed (q, k, v) layout.
DINO_FEATURES = ("v", "k", "q")
_QKV_INDEX = {"q": 0, "k": 1, "v": 2}


def _layout_error(what: str) -> ValueError:
    return ValueError(f"dino_features: unsupported timm model, {what}")


def _check_vit_layout(vit: nn.Module) -> None:
    """Raise ValueError unless `vit` has the timm ViT layout the qkv features rely on."""
    if not isinstance(vit, VisionTransformer):
        raise _layout_error(f"expected timm VisionTransformer, got {type(vit).__name__}")
    proj = getattr(vit.patch_embed, "proj", None)
    if not isinstance(proj, nn.Conv2d) or tuple(proj.stride) != (PATCH_SIZE, PATCH_SIZE):
        raise _layout_error(f"expected patch_embed.proj to be a Conv2d with stride {PATCH_SIZE}")
    if tuple(vit.patch_embed.patch_size) != (PATCH_SIZE, PATCH_SIZE):
        raise _layout_error(f"expected patch size {PATCH_SIZE}, got {tuple(vit.patch_embed.patch_size)}")
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


def _dino_positional_embedding(vit: VisionTransformer, grid: Sequence[int]) -> torch.Tensor:
    """Positional embedding [1, P + gh * gw, D] for patch grid (gh, gw); P = prefix rows in pos_embed.

    Reproduces facebookresearch/dino `interpolate_pos_encoding`: bicubic with
    scale_factor ((gh + 0.1) / gh0, (gw + 0.1) / gw0), the +0.1 avoiding floating-point rounding of the
    output size. timm's `resample_abs_pos_embed` (dynamic_img_size=True) uses `size=` and antialias=True
    instead, which gives different values, so it is not used.
    """
    pos = vit.pos_embed
    grid0 = tuple(vit.patch_embed.grid_size)
    if tuple(grid) == grid0:
        return pos
    n_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
    dim = pos.shape[-1]
    patch_pos = pos[:, n_prefix:].float().reshape(1, grid0[0], grid0[1], dim).permute(0, 3, 1, 2)  # [1, D, gh0, gw0]
    scale = ((grid[0] + 0.1) / grid0[0], (grid[1] + 0.1) / grid0[1])
    patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", align_corners=False)
    if tuple(patch_pos.shape[-2:]) != tuple(grid):
        raise RuntimeError(f"positional embedding resized to {tuple(patch_pos.shape[-2:])}, expected {tuple(grid)}")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)  # [1, gh * gw, D]
    return torch.cat([pos[:, :n_prefix], patch_pos.to(pos.dtype)], dim=1)


def _dino_tokens(vit: VisionTransformer, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Input tokens of the first block, as timm's ViT builds them but with DINO's interpolation.

    Args:
        x: [B, 3, H, W] normalised, H and W multiples of 16, in the model's dtype.

    Returns:
        tokens [B, num_prefix_tokens + gh * gw, D] and the patch grid (gh, gw).
    """
    x = vit.patch_embed.proj(x)  # [B, D, gh, gw]
    grid = (x.shape[-2], x.shape[-1])
    x = vit.patch_embed.norm(x.flatten(2).transpose(1, 2))  # [B, gh * gw, D]
    prefix = [t.expand(x.shape[0], -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
    pos = _dino_positional_embedding(vit, grid).to(x.dtype)
    if vit.no_embed_class:
        x = torch.cat(prefix + [x + pos], dim=1)
    else:
        x = torch.cat(prefix + [x], dim=1) + pos
    # pos_drop / patch_drop are identities in eval mode and are not applied.
    return vit.norm_pre(x), grid


@torch.no_grad()
def dino_features(vit: nn.Module, images: torch.Tensor, kind: str = "v") -> torch.Tensor:
    """L2-normalised value, key or query features of the last block's attention of a timm DINO ViT.

    See docs/method.md, "Pipeline", step 6: the output of the last block's qkv layer, the `kind` part, heads
    concatenated, prefix tokens (CLS, registers) dropped, each patch L2-normalised.

    Args:
        vit: timm VisionTransformer with patch size 16 (any dtype).
        images: [B, 3, H, W] float RGB in [0, 1], any device (moved to the model's).
        kind: 'v' (the paper's), 'k' or 'q'.

    Returns:
        [B, D, ceil(H / 16), ceil(W / 16)] float32, unit L2 norm along D (D = embed dim, heads concatenated).
    """
    check_images(images, "dino_features")
    if kind not in _QKV_INDEX:
        raise ValueError(f"DINO features {kind!r}: expected one of {', '.join(DINO_FEATURES)}")
    _check_vit_layout(vit)
    weight = vit.patch_embed.proj.weight
    x = pad_and_normalize(images.to(weight.device), IMAGENET_MEAN, IMAGENET_STD, weight.dtype)
    tokens, grid = _dino_tokens(vit, x)
    captured: list[torch.Tensor] = []
    handle = vit.blocks[-1].attn.qkv.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        # The whole block stack runs, as in the reference; the final norm cannot change the hooked qkv.
        vit.blocks(tokens)
    finally:
        handle.remove()
    qkv = captured[-1]  # [B, N, 3 * D], laid out as (3, heads, head_dim) on the last axis
    batch, n_tokens, _ = qkv.shape
    part = qkv.reshape(batch, n_tokens, 3, -1)[:, :, _QKV_INDEX[kind]]  # [B, N, D], heads concatenated
    part = F.normalize(part[:, vit.num_prefix_tokens :].float(), dim=-1)  # drop CLS / registers
    return tokens_to_map(part, grid)


def dino_value_features(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """`dino_features(vit, images, "v")`: the paper's value features, [B, D, gh, gw] float32, unit L2 norm along D."""
    return dino_features(vit, images, "v")
