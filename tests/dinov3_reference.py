"""Reference DINOv3 features for the tests, re-derived from facebookresearch/dinov3 and timm's Eva (not from models/).

- Tokens (dinov3 `DinoVisionTransformer.prepare_tokens_with_masks`): the patch embedding (a stride-p convolution),
  then `[CLS, storage tokens, patches]`; no absolute position.
- RoPE (dinov3 `RopePositionEmbedding`, `normalize_coords="separate"`): patch centres `(i + 0.5) / H`,
  `(j + 0.5) / W` mapped to [-1, 1]; periods `base ** (2 t / (d / 2))`, t < d / 4 (d = head dim, base 100);
  angles `2 pi c / period` for both axes (rows first), the angle vector repeated twice; `rope_apply(x) = x cos +
  rotate_half(x) sin` with `rotate_half([a, b]) = [-b, a]`. Applied to the patch rows of q and k only (the prefix
  tokens and v are never rotated), for the grid of the image at hand (dinov3 calls `rope_embed(H=H, W=W)` per
  input). timm keeps the periods in float32 where the released checkpoints hold them in bfloat16; this follows timm.
- Block (dinov3 `SelfAttentionBlock`, timm `EvaBlock`): `x + ls1 * proj(softmax(q k^T / sqrt(d)) v)` on
  `norm1(x)`, then `x + ls2 * fc2(gelu(fc1(norm2(x))))`; qkv bias `(q_bias, 0, v_bias)` (the key bias is masked to
  0, dinov3 `LinearKMaskedBias`) or none.
- Output (`get_intermediate_layers(..., norm=True)`): `norm(x)`, the `1 + storage` first tokens dropped.

The parameters are the timm model's. Planted bugs a test must catch (arguments): `rope_on_v` (v rotated too),
`rotated_kq` (k / q taken after RoPE), `keep_storage` (the storage tokens taken as patches, the last patches lost),
`rope_grid` (RoPE of another grid than the image's, e.g. a fixed 224 window's or the transposed one).
"""

import math

import torch
import torch.nn.functional as F

LVD_MEAN, LVD_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's (dinov3 `make_normalize_transform`)
SAT_MEAN, SAT_STD = (0.430, 0.411, 0.296), (0.213, 0.156, 0.143)  # the SAT-493M models' (dinov3 README)


def rope_sin_cos(rows: int, cols: int, head_dim: int, base: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(sin, cos), each [rows * cols, head_dim], of the patches of a rows x cols grid in row-major order."""
    ys = (torch.arange(rows, dtype=torch.float32) + 0.5) / rows
    xs = (torch.arange(cols, dtype=torch.float32) + 0.5) / cols
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2) * 2.0 - 1.0  # [HW, 2]
    quarter = head_dim // 4
    periods = base ** (2 * torch.arange(quarter, dtype=torch.float32) / (head_dim // 2))
    angles = (2 * math.pi * coords[:, :, None] / periods).reshape(rows * cols, 2 * quarter)  # rows' angles first
    angles = torch.cat([angles, angles], dim=-1)
    return angles.sin(), angles.cos()


def rope_apply(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


def _rotate_patches(x: torch.Tensor, prefix: int, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """x [B, heads, N, d]: the rows after the prefix rotated."""
    patches = x[:, :, prefix:]
    sin, cos = sin[: patches.shape[2]], cos[: patches.shape[2]]  # a wrong grid may have more positions
    return torch.cat([x[:, :, :prefix], rope_apply(patches, sin, cos)], dim=2)


def _layer_norm(norm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def block(blk, x: torch.Tensor, prefix: int, sin, cos, rope_on_v: bool = False, capture: list | None = None):
    """One pre-norm block with timm `blk`'s parameters; `capture` receives (q, k, v) [B, heads, N, d] (pre-RoPE and,
    as a second entry, post-RoPE)."""
    batch, tokens, dim = x.shape
    attn = blk.attn
    heads = attn.num_heads
    bias = None if attn.q_bias is None else torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
    qkv = F.linear(_layer_norm(blk.norm1, x), attn.qkv.weight, bias)
    q, k, v = qkv.reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    if capture is not None:
        capture.append((q, k, v))
    q, k = _rotate_patches(q, prefix, sin, cos), _rotate_patches(k, prefix, sin, cos)
    if rope_on_v:
        v = _rotate_patches(v, prefix, sin, cos)
    if capture is not None:
        capture.append((q, k, v))
    weights = (q @ k.transpose(-2, -1) / math.sqrt(dim // heads)).softmax(dim=-1)
    out = F.linear((weights @ v).transpose(1, 2).reshape(batch, tokens, dim), attn.proj.weight, attn.proj.bias)
    x = x + blk.gamma_1 * out
    hidden = F.linear(F.gelu(F.linear(_layer_norm(blk.norm2, x), blk.mlp.fc1.weight, blk.mlp.fc1.bias)),
                      blk.mlp.fc2.weight, blk.mlp.fc2.bias)  # fmt: skip
    return x + blk.gamma_2 * hidden


@torch.no_grad()
def reference_features(
    vit,
    images: torch.Tensor,
    mean=LVD_MEAN,
    std=LVD_STD,
    rope_on_v: bool = False,
    rotated_kq: bool = False,
    keep_storage: bool = False,
    rope_grid: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """{kind: [B, D, H / p, W / p]} L2-normalised, kinds 'x', 'q', 'k', 'v', for `images` [B, 3, H, W] in [0, 1]
    (sides multiples of the patch size p)."""
    patch = vit.patch_embed.proj.kernel_size[0]
    rows, cols = images.shape[-2] // patch, images.shape[-1] // patch
    x = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    x = F.conv2d(x, vit.patch_embed.proj.weight, vit.patch_embed.proj.bias, stride=patch).flatten(2).transpose(1, 2)
    storage = vit.reg_token.shape[1]
    batch = x.shape[0]
    x = torch.cat([vit.cls_token.expand(batch, -1, -1), vit.reg_token.expand(batch, -1, -1), x], dim=1)
    heads = vit.blocks[0].attn.num_heads
    sin, cos = rope_sin_cos(*(rope_grid or (rows, cols)), x.shape[-1] // heads)
    captured: list = []
    for index, blk in enumerate(vit.blocks):
        last = index == len(vit.blocks) - 1
        x = block(blk, x, 1 + storage, sin, cos, rope_on_v, captured if last else None)
    parts = dict(zip("qkv", captured[1 if rotated_kq else 0]))
    if rope_on_v:
        parts["v"] = captured[1][2]
    out = {kind: part.transpose(1, 2).reshape(batch, x.shape[1], -1) for kind, part in parts.items()}  # heads concat.
    out["x"] = _layer_norm(vit.norm, x)
    first = 1 if keep_storage else 1 + storage
    maps = {}
    for kind, tokens in out.items():
        tokens = F.normalize(tokens[:, first : first + rows * cols], dim=-1)
        maps[kind] = tokens.reshape(batch, rows, cols, -1).permute(0, 3, 1, 2)
    return maps
