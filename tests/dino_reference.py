"""Reference DINO and DINOv2 features for the tests, written from the authors' code (not from models/), in its layout.

- DINO (facebookresearch/dino `vision_transformer.py`): `prepare_tokens` adds the positional embedding resized by
  `interpolate_pos_encoding` (bicubic, `scale_factor = ((h / p + 0.1) / g0, (w / p + 0.1) / g0)`, unchanged when the
  grid is the pretraining one); `get_intermediate_layers(x, n=1)` returns `norm(x)` after the last block.
- DINOv2 (facebookresearch/dinov2 `dinov2/models/vision_transformer.py`, `DinoVisionTransformer`):
  `prepare_tokens_with_masks` puts CLS first, adds `interpolate_pos_encoding(x, w, h)` (with `interpolate_offset`:
  `scale_factor = ((h / p + offset) / M, (w / p + offset) / M)`, else `size = (h / p, w / p)`; bicubic with
  `antialias=interpolate_antialias`, in float32), then inserts the register tokens (no position) after CLS;
  `get_intermediate_layers(x, 1, norm=True)` takes `norm(x)` and drops `1 + num_register_tokens` tokens. The hub
  (`dinov2/hub/backbones.py`) builds the original models with offset 0.1 and no antialias, the `_reg` models with
  offset 0.0 and antialias.

The blocks are the authors' `Block`: `x + ls1(attn(norm1(x)))`, then `x + ls2(mlp(norm2(x)))` (DINO has no layer
scale), attention `softmax(q k^T * d^-0.5) v` per head with qkv laid out as (3, heads, d). The parameters are the
timm model's, mapped to the authors' names: timm folds the CLS position of the register models into `cls_token`,
which is the authors' `cls_token + pos_embed[:, 0]`. Planted bugs a test must catch: `keep_registers=True` (the
register tokens taken as patches, the last patches lost), and another model's `offset` / `antialias`.
"""

import math

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)


def resized_pos_encoding(patch_pos: torch.Tensor, rows: int, cols: int, offset: float, antialias: bool) -> torch.Tensor:
    """The authors' `interpolate_pos_encoding` on the patch rows [1, M * M, D] -> [1, rows * cols, D]."""
    side = int(math.sqrt(patch_pos.shape[1]))
    if side * side == rows * cols and rows == cols:
        return patch_pos
    grid = patch_pos.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    if offset:
        kwargs = {"scale_factor": (float(rows + offset) / side, float(cols + offset) / side)}
    else:
        kwargs = {"size": (rows, cols)}
    grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **kwargs)
    assert grid.shape[-2:] == (rows, cols)
    return grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)


def block(blk, x: torch.Tensor, capture: list | None = None) -> torch.Tensor:
    """The authors' Block with timm `blk`'s parameters; `capture` receives the attention's qkv output."""
    batch, tokens, dim = x.shape
    heads = blk.attn.num_heads
    qkv = F.linear(blk.norm1(x), blk.attn.qkv.weight, blk.attn.qkv.bias)
    if capture is not None:
        capture.append(qkv)
    q, k, v = qkv.reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    attn = ((q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    out = F.linear((attn @ v).transpose(1, 2).reshape(batch, tokens, dim), blk.attn.proj.weight, blk.attn.proj.bias)
    scale1 = blk.ls1.gamma if hasattr(blk.ls1, "gamma") else 1.0
    x = x + out * scale1
    hidden = blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(x))))
    scale2 = blk.ls2.gamma if hasattr(blk.ls2, "gamma") else 1.0
    return x + hidden * scale2


@torch.no_grad()
def reference_features(vit, images: torch.Tensor, kind: str, offset: float, antialias: bool, keep_registers=False):
    """Features [B, D, h / p, w / p], L2-normalised, of `kind` ('x' or a qkv part) by the authors' code.

    `images` [B, 3, H, W] in [0, 1], sides multiples of the patch size; offset / antialias: the model's resize
    (DINO: 0.1, False).
    """
    patch = vit.patch_embed.proj.kernel_size[0]
    rows, cols = images.shape[-2] // patch, images.shape[-1] // patch
    x = F.conv2d((images - MEAN) / STD, vit.patch_embed.proj.weight, vit.patch_embed.proj.bias, stride=patch)
    x = x.flatten(2).transpose(1, 2)
    registers = 0 if vit.reg_token is None else vit.reg_token.shape[1]
    if vit.no_embed_class:  # timm's layout of the register models: pos_embed holds the patch rows only
        cls, patch_pos = vit.cls_token, vit.pos_embed
    else:
        cls, patch_pos = vit.cls_token + vit.pos_embed[:, :1], vit.pos_embed[:, 1:]
    x = x + resized_pos_encoding(patch_pos, rows, cols, offset, antialias).to(x.dtype)
    x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
    if registers:
        x = torch.cat([x[:, :1], vit.reg_token.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
    captured: list = []
    for index, blk in enumerate(vit.blocks):
        x = block(blk, x, captured if index == len(vit.blocks) - 1 else None)
    if kind == "x":
        out = vit.norm(x)
    else:
        out = captured[0].reshape(x.shape[0], x.shape[1], 3, -1)[:, :, "qkv".index(kind)]
    first = 1 if keep_registers else 1 + registers
    out = F.normalize(out[:, first : first + rows * cols], dim=-1)
    return out.reshape(out.shape[0], rows, cols, -1).permute(0, 3, 1, 2)
