"""Reference CLIP heads for the tests, written from the authors' code (not from models/), in its layout.

Each method's repository runs the visual transformer sequence-first (tokens [N, B, C]) and replaces the last block by
a `custom_attn` on `ln_1(x)` that folds batch and heads into one axis ([B * heads, N, d]) and uses `torch.bmm`:

- SCLIP, wangf3014/SCLIP `clip/model.py`, `csa=True`: weights `softmax(q qT * s) + softmax(k kT * s)`, then
  `x = x + attn; x = x + mlp(ln_2(x))`;
- ClearCLIP, mc-lan/ClearCLIP `open_clip/transformer.py`, `model_type='ClearCLIP'`, `ignore_residual=True`:
  weights `softmax(q qT * s)`, the output is the attention alone;
- NACLIP, sinahmr/NACLIP `clip/model.py`, `arch='reduced'`, `attn_strategy='naclip'`, `gaussian_std=5`: weights
  `softmax(k kT * s + addition)`, the output is the attention alone. The addition is built as NACLIP builds it: a
  Gaussian window of size (2 gh - 1, 2 gw - 1) from `linspace` offsets, correlated ('same' padding) with one-hot
  maps of every patch position, then a zero row and column prepended for CLS.

All of them then apply `ln_post` to every token, project with `proj` and drop CLS. `mutations` plants the bugs a
test must catch: a wrong std, q where k belongs, a kept residual.

ProxyCLIP, mc-lan/ProxyCLIP `open_clip/transformer.py`, `VisionTransformer.forward` with `ex_feats` and
`custom_attn` (`proxyclip_reference`): on `ln_1(x)` of the last block, `v` of `in_proj` per head
([B * heads, N, d]); proxy features [B, C, H, W] flattened and L2-normalised along C, `similarity = q_k^T q_k`
per window (einsum "b c m, b c n -> b m n"), `(similarity - mean(similarity, dim=(1, 2)) * beta) * gamma`, entries
below 0 set to -inf, repeated for every head, softmax over the last axis; `v` without CLS reshaped to the token grid
and resized bilinearly (align_corners False) to (H, W); `out_proj(bmm(attn, v))`, which replaces x (no residual, no
MLP); then `ln_post` and `proj`. The authors take the token grid as (W / p, H / p): right for their square windows,
so the tests pass the true grid. Planted bugs: `row_mean` (the mean over one axis), `batch_mean` (over the batch
too), `keep_residual` (x[1:] + attention).
"""

import math

import open_clip
import torch
import torch.nn.functional as F

MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


@torch.no_grad()
def tokens_before_last_block(model, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Sequence-first tokens [N, B, C] leaving the second-to-last block, and the patch grid.

    The images' sides must be multiples of the patch size; the patch part of the positional embedding is resized bicubically
    (size=grid, align_corners False) when the grid is not the pretraining one (LPOSS's protocol).
    """
    visual = model.visual
    x = visual.conv1((images - MEAN) / STD)
    grid = tuple(x.shape[-2:])
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    pos = visual.positional_embedding
    if grid != tuple(visual.grid_size):
        side = visual.grid_size[0]
        patch = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=grid, mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])
    cls = visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + pos)
    for block in visual.transformer.resblocks[:-1]:  # open_clip's blocks are batch-first
        x = block(x)
    return x.permute(1, 0, 2), grid


def gaussian_window(rows: int, cols: int, std: float) -> torch.Tensor:
    """exp(-(offset_i^2 + offset_j^2) / (2 std^2)) on a rows x cols grid of offsets centred on 0 (NACLIP's way)."""
    factor = 1 / (std * math.sqrt(2))
    axes = []
    for size in (rows, cols):
        first = -(size - 1) / 2.0
        axes.append(torch.linspace(first * factor, (first + size - 1) * factor, steps=size))
    squared = torch.stack(torch.meshgrid(*axes, indexing="ij")).pow(2).sum(0)
    return torch.exp(-squared)


def neighbourhood_addition(grid: tuple[int, int], std: float) -> torch.Tensor:
    """[1 + gh * gw, 1 + gh * gw]: the window correlated with a one-hot map of each patch, CLS row/column 0."""
    gh, gw = grid
    window = gaussian_window(2 * gh - 1, 2 * gw - 1, std)
    one_hot = torch.eye(gh * gw).reshape(gh * gw, 1, gh, gw)  # map p is 1 at patch p only
    spread = F.conv2d(one_hot, window[None, None], padding="same").reshape(gh * gw, gh * gw)
    with_cls = torch.zeros(gh * gw + 1, gh * gw + 1)
    with_cls[1:, 1:] = spread
    return with_cls


def custom_attention(block, x: torch.Tensor, head: str, grid, std: float = 5.0, mutations=()) -> torch.Tensor:
    """The method's attention output on sequence-first x [N, B, C] (x is ln_1 of the block input)."""
    attn = block.attn
    tokens, batch, width = x.shape
    heads = attn.num_heads
    dim = width // heads
    scale = dim**-0.5
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.contiguous().view(-1, batch * heads, dim).transpose(0, 1) for t in (q, k, v))
    keys = q if "q_for_k" in mutations else k
    if head == "sclip":
        weights = F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, dim=-1)
        weights = weights + F.softmax(torch.bmm(keys, keys.transpose(1, 2)) * scale, dim=-1)
    elif head == "clearclip":
        weights = F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, dim=-1)
    elif head == "naclip":
        logits = torch.bmm(keys, keys.transpose(1, 2)) * scale
        weights = F.softmax(logits + neighbourhood_addition(grid, std)[None], dim=-1)
    else:
        raise ValueError(head)
    out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(-1, batch, width)
    return attn.out_proj(out)


@torch.no_grad()
def reference_head(model, tokens: torch.Tensor, grid, head: str, std: float = 5.0, mutations=()) -> torch.Tensor:
    """Dense features [B, E, gh, gw] of `head` from `tokens_before_last_block`'s output."""
    block = model.visual.transformer.resblocks[-1]
    x = tokens
    if head == "maskclip":  # docs/method.md step 4: the value path only, then the residual and the MLP
        width = x.shape[-1]
        value = F.linear(block.ln_1(x), block.attn.in_proj_weight, block.attn.in_proj_bias)[..., 2 * width :]
        x = x + block.attn.out_proj(value)
        x = x + block.mlp(block.ln_2(x))
    elif head == "sclip":
        x = x + custom_attention(block, block.ln_1(x), head, grid, std, mutations)
        x = x + block.mlp(block.ln_2(x))
    elif "keep_residual" in mutations:
        x = x + custom_attention(block, block.ln_1(x), head, grid, std, mutations)
    else:
        x = custom_attention(block, block.ln_1(x), head, grid, std, mutations)
    features = model.visual.ln_post(x.permute(1, 0, 2)) @ model.visual.proj  # [B, N, E]
    features = features[:, 1:]
    return features.reshape(features.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2)


@torch.no_grad()
def proxyclip_reference(model, tokens: torch.Tensor, grid, proxy: torch.Tensor, beta=1.2, gamma=3.0, mutations=()):
    """ProxyCLIP's dense features [B, E, H, W] from `tokens_before_last_block`'s output and proxy [B, C, H, W]."""
    block = model.visual.transformer.resblocks[-1]
    attn_layer = block.attn
    x = block.ln_1(tokens)
    _, bsz, embed_dim = x.shape
    heads = attn_layer.num_heads
    head_dim = embed_dim // heads
    v = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)[2]
    v = v.contiguous().view(-1, bsz * heads, head_dim).transpose(0, 1)
    _, _, height, width = proxy.shape
    q_k = F.normalize(proxy.flatten(2, 3), dim=1)
    similarity = torch.einsum("b c m, b c n -> b m n", q_k, q_k)
    if "row_mean" in mutations:
        mean = similarity.mean(dim=2, keepdim=True)
    elif "batch_mean" in mutations:
        mean = similarity.mean()
    else:
        mean = similarity.mean(dim=(1, 2), keepdim=True)
    similarity = (similarity - mean * beta) * gamma
    similarity[similarity < 0.0] = float("-inf")
    mask = similarity.unsqueeze(1).repeat(1, heads, 1, 1).reshape(bsz * heads, height * width, height * width)
    weights = F.softmax(mask, dim=-1)
    v = v[:, 1:, :].reshape(bsz * heads, grid[0], grid[1], head_dim).permute(0, 3, 1, 2)
    v = F.interpolate(v, size=(height, width), mode="bilinear", align_corners=False)
    v = v.permute(0, 2, 3, 1).reshape(bsz * heads, height * width, head_dim)
    out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    out = attn_layer.out_proj(out)
    if "keep_residual" in mutations:  # the block input, CLS dropped, resized to the proxy grid as v is
        residual = tokens[1:].permute(1, 2, 0).reshape(bsz, embed_dim, grid[0], grid[1])
        residual = F.interpolate(residual, size=(height, width), mode="bilinear", align_corners=False)
        out = out + residual.flatten(2).permute(2, 0, 1)
    features = model.visual.ln_post(out.permute(1, 0, 2)) @ model.visual.proj  # [B, H * W, E]
    return features.reshape(bsz, height, width, -1).permute(0, 3, 1, 2)
