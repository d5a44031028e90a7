"""DINOv3 patch features of the last block (docs/method.md, "Other backbones") from timm's `Eva` with RoPE.

timm builds facebookresearch/dinov3's ViTs (`vit_{small,base,large,...}_patch16_dinov3[_qkvb]`) as its `Eva` class:
no absolute positional embedding, an axial RoPE on the patch tokens' queries and keys, a CLS token and 4 storage
(register) tokens in front of the patches, layer scale in every block. The feature kinds are those of `dino.py`:
`v`, `k`, `q` are the parts of the last block's qkv output on its `norm1` input, heads concatenated, `k` and `q`
taken *before* RoPE rotates them (RoPE's rotation depends on a patch's place in its window, so rotated keys of the
same content differ from one place to the next; `v` is never rotated); `x` is the last block's output after the
final norm, as timm's `forward_features` and the authors' `get_intermediate_layers(..., norm=True)` return it.

The RoPE of each window is computed for the window's own patch grid, as timm's model with `dynamic_img_size=True`
(and the authors' `rope_embed(H=H, W=W)`) compute it. Mean and std are the model's own, from its timm
`pretrained_cfg` (LVD-1689M weights: ImageNet's; SAT-493M: the satellite ones). The timm internals used are checked
by `check_dinov3_layout`, so a layout change in a future timm fails loudly.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers.pos_embed_sincos import RotaryEmbeddingDinoV3
from timm.models.eva import Eva, EvaAttention, EvaBlock
from torch import nn

from ._image import check_images, pad_and_normalize, tokens_to_map

_QKV_INDEX = {"q": 0, "k": 1, "v": 2}  # position in timm's packed (q, k, v) layout


def _layout_error(what: str) -> ValueError:
    return ValueError(f"dino_features: unsupported timm DINOv3 model, {what}")


def is_dinov3(vit: nn.Module) -> bool:
    """True for a timm `Eva` (the class of timm's DINOv3 models), whose features this module computes."""
    return isinstance(vit, Eva)


def dinov3_mean_std(vit: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The model's normalisation (mean, std), 3 values each, from its timm `pretrained_cfg`.

    LVD-1689M weights: ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225); SAT-493M weights:
    (0.430, 0.411, 0.296) / (0.213, 0.156, 0.143). A model built without a tag has its default tag's.
    """
    cfg = getattr(vit, "pretrained_cfg", None) or {}
    mean, std = tuple(cfg.get("mean") or ()), tuple(cfg.get("std") or ())
    if len(mean) != 3 or len(std) != 3:
        raise _layout_error(f"expected 3-channel mean and std in its pretrained_cfg, got {mean} and {std}")
    return mean, std


def _check_attention(attn: nn.Module, vit: Eva) -> None:
    if not isinstance(attn, EvaAttention):
        raise _layout_error(f"expected blocks[*].attn to be timm EvaAttention, got {type(attn).__name__}")
    qkv = attn.qkv
    if not isinstance(qkv, nn.Linear) or qkv.out_features != 3 * vit.embed_dim:
        raise _layout_error(f"expected a fused qkv nn.Linear with out_features {3 * vit.embed_dim}")
    if attn.num_prefix_tokens != vit.num_prefix_tokens:
        raise _layout_error(
            f"expected RoPE to skip {vit.num_prefix_tokens} prefix tokens, got {attn.num_prefix_tokens}"
        )
    if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)):
        raise _layout_error("expected no q / k norm (k and q are read from the qkv output)")


def check_dinov3_layout(vit: nn.Module) -> None:
    """Raise ValueError unless `vit` is a timm Eva with DINOv3's layout: square patch embedding, CLS and storage
    tokens, no absolute positional embedding, DINOv3's RoPE, pre-norm blocks with a fused qkv, a mean and std."""
    if not isinstance(vit, Eva):
        raise _layout_error(f"expected timm Eva, got {type(vit).__name__}")
    proj = getattr(vit.patch_embed, "proj", None)
    patch = tuple(vit.patch_embed.patch_size)
    if not isinstance(proj, nn.Conv2d) or patch[0] != patch[1] or tuple(proj.stride) != patch:
        raise _layout_error(f"expected patch_embed.proj to be a Conv2d with a square stride, patch size {patch}")
    if vit.pos_embed is not None or not isinstance(vit.rope, RotaryEmbeddingDinoV3) or vit.rope_mixed:
        raise _layout_error("expected DINOv3's RoPE (RotaryEmbeddingDinoV3) and no absolute positional embedding")
    registers = vit.reg_token.shape[1] if vit.reg_token is not None else 0
    if vit.cls_token is None or 1 + registers != vit.num_prefix_tokens:
        raise _layout_error(f"expected the CLS token and registers as the {vit.num_prefix_tokens} prefix tokens")
    if vit.patch_drop is not None:
        raise _layout_error("expected no patch dropout")
    for block in vit.blocks:
        if not isinstance(block, EvaBlock):
            raise _layout_error(f"expected pre-norm EvaBlocks, got {type(block).__name__}")
        _check_attention(block.attn, vit)
    dinov3_mean_std(vit)


def _dinov3_tokens(vit: Eva, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Input tokens of the first block, as timm's `_pos_embed` and DINOv3's `prepare_tokens_with_masks` build them.

    Args:
        x: [B, 3, H, W] normalised, H and W multiples of the patch size, in the model's dtype.

    Returns:
        tokens [B, 1 + R + gh * gw, D] (CLS, R storage tokens, patches in row-major order) and the grid (gh, gw).
    """
    x = vit.patch_embed.proj(x)  # [B, D, gh, gw]
    grid = (x.shape[-2], x.shape[-1])
    x = vit.patch_embed.norm(x.flatten(2).transpose(1, 2))  # [B, gh * gw, D]
    prefix = [t.expand(x.shape[0], -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
    # No absolute position: RoPE inside the attention is the only one. pos_drop is an identity in eval mode.
    return vit.norm_pre(torch.cat(prefix + [x], dim=1)), grid


def _qkv(attn: EvaAttention, h: torch.Tensor) -> torch.Tensor:
    """The attention's qkv output [B, N, 3 * D] on its input `h` [B, N, D], before any RoPE.

    timm keeps DINOv3's bias outside the Linear (`q_bias`, a zero `k_bias`, `v_bias`; the `_qkvb` variants) or has
    none (the plain variants, whose released biases are all zero).
    """
    if attn.q_bias is None:
        return F.linear(h, attn.qkv.weight, attn.qkv.bias)
    return F.linear(h, attn.qkv.weight, torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)))


@torch.no_grad()
def dinov3_feature_maps(vit: nn.Module, images: torch.Tensor, kinds: Sequence[str]) -> dict[str, torch.Tensor]:
    """DINOv3 features of `kinds` ('v', 'k', 'q', 'x') from one forward pass: {kind: [B, D, gh, gw]}.

    Args:
        vit: timm Eva with DINOv3's layout (`check_dinov3_layout`), any dtype.
        images: [B, 3, H, W] float RGB in [0, 1], any device (moved to the model's); padded with black to a
            multiple of the patch size p, then normalised with the model's mean / std (`dinov3_mean_std`).
        kinds: 'v', 'k', 'q' (parts of the last block's qkv output, heads concatenated, k / q before RoPE) or 'x'
            (the last block's output after the final norm). The CLS and storage tokens are dropped.

    Returns:
        {kind: [B, D, ceil(H / p), ceil(W / p)] float32, unit L2 norm along D}.
    """
    check_images(images, "dino_features")
    unknown = [kind for kind in kinds if kind != "x" and kind not in _QKV_INDEX]
    if unknown:
        raise ValueError(f"DINO features {unknown[0]!r}: expected one of v, k, q, x")
    check_dinov3_layout(vit)
    mean, std = dinov3_mean_std(vit)
    weight = vit.patch_embed.proj.weight
    x = pad_and_normalize(images.to(weight.device), mean, std, weight.dtype, int(vit.patch_embed.patch_size[0]))
    tokens, grid = _dinov3_tokens(vit, x)
    rope = vit.rope.get_embed(shape=list(grid))  # [gh * gw, 2 * head_dim]: this window's own grid
    for block in vit.blocks[:-1]:
        tokens = block(tokens, rope=rope)
    last = vit.blocks[-1]
    qkv = None
    if set(kinds) - {"x"}:
        qkv = _qkv(last.attn, last.norm1(tokens))  # [B, N, 3 * D], laid out as (3, heads, head_dim)
        qkv = qkv.reshape(qkv.shape[0], qkv.shape[1], 3, -1)  # [B, N, 3, D], heads concatenated
    maps = {}
    for kind in dict.fromkeys(kinds):
        if kind == "x":
            part = vit.norm(last(tokens, rope=rope))  # [B, N, D]
        else:
            part = qkv[:, :, _QKV_INDEX[kind]]  # [B, N, D]
        part = F.normalize(part[:, vit.num_prefix_tokens :].float(), dim=-1)  # drop CLS / storage tokens
        maps[kind] = tokens_to_map(part, grid)
    return maps
