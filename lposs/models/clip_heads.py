"""The last CLIP block of training-free dense-prediction methods (docs/method.md, "Heads").

Each head replaces the last residual block of an open_clip ViT; everything before it (the other blocks) and
after it (`ln_post`, dropping CLS, `proj`) stays as in MaskCLIP. With `x` the output of the second-to-last block
(CLS first), `q, k, v` the per-head parts of `in_proj(ln_1(x))` and `s = head_dim ** -0.5`:

- `sclip` (SCLIP, wangf3014/SCLIP `clip/model.py`, `csa=True`): `A = softmax(s q qT) + softmax(s k kT)`,
  `y = x + out_proj(A v)`, `y = y + mlp(ln_2(y))`;
- `clearclip` (ClearCLIP, mc-lan/ClearCLIP `open_clip/transformer.py`, `model_type='ClearCLIP'`,
  `ignore_residual=True`): `A = softmax(s q qT)`, `y = out_proj(A v)`, no residual and no MLP;
- `naclip` (NACLIP, sinahmr/NACLIP `clip/model.py`, `arch='reduced'`, `attn_strategy='naclip'`):
  `A = softmax(s k kT + Omega)`, `y = out_proj(A v)`, no residual and no MLP; `Omega` a Gaussian of the
  distance between patch positions (std 5 patches), 0 in the CLS row and column;
- `proxyclip` (ProxyCLIP, mc-lan/ProxyCLIP `open_clip/transformer.py`, `VisionTransformer.custom_attn`): the
  attention comes from proxy features F [C, h * w] of the same window (a vision model's, on its own grid h x w):
  with F's columns L2-normalised, `S = FT F`, `S' = gamma (S - beta mean(S))` (mean over the window's whole
  matrix), entries below 0 set to -inf, `A = softmax(S')` shared by all heads (a row that is -inf throughout, NaN
  in the authors' code, attends to its own patch only); the values (CLS dropped) are resized
  bilinearly from the CLIP grid to h x w; `y = out_proj(A v)`, no residual and no MLP; the output has no CLS token.

Attention is per head (never averaged over heads) and, but for ProxyCLIP's, covers every token, CLS included, as in
the authors' code. `maskclip`, the default, lives in `models.maskclip` and is not computed here.
"""

import logging

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

CLIP_HEADS = ("maskclip", "sclip", "clearclip", "naclip", "proxyclip")
# NACLIP's Gaussian window, in patches: its paper's value and its code's default (`gaussian_std=5.`).
NACLIP_GAUSSIAN_STD = 5.0
# ProxyCLIP's defaults (`ProxyCLIPSegmentation(beta=1.2, gamma=3.0)`, `custom_attn(beta=1.2, gamma=3.0)`).
PROXY_BETA = 1.2
PROXY_GAMMA = 3.0


def check_head(head: str) -> None:
    """ValueError unless `head` is one of CLIP_HEADS."""
    if head not in CLIP_HEADS:
        raise ValueError(f"CLIP head {head!r}: expected one of {', '.join(CLIP_HEADS)}")


def neighbourhood_bias(grid: tuple[int, int], std: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """NACLIP's attention addition Omega [1 + gh * gw, 1 + gh * gw] float32 in [0, 1], CLS first.

    `Omega[p, p'] = exp(-((i - i')^2 + (j - j')^2) / (2 std^2))` for patches at row-major grid positions
    (i, j), (i', j'); the CLS row and column are 0, as NACLIP's `adjust_for_cls`. NACLIP builds the same matrix by
    convolving one-hot maps with a (2 gh - 1) x (2 gw - 1) Gaussian window, so no offset is ever cut off.
    """
    rows = torch.arange(grid[0], dtype=torch.float32, device=device).repeat_interleave(grid[1])
    cols = torch.arange(grid[1], dtype=torch.float32, device=device).repeat(grid[0])
    squared = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2  # [gh*gw, gh*gw]
    return F.pad(torch.exp(-squared / (2.0 * std**2)), (1, 0, 1, 0))  # zero CLS row and column


def _per_head(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, N, C] -> [B, heads, N, C / heads] (heads are consecutive channel blocks, as nn.MultiheadAttention)."""
    batch, tokens, channels = t.shape
    return t.reshape(batch, tokens, num_heads, channels // num_heads).transpose(1, 2)


def _attention(head: str, q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The head's attention weights [B, heads, N, N] from per-head q, k [B, heads, N, d]."""
    scale = q.shape[-1] ** -0.5
    if head == "clearclip":
        return torch.softmax((q @ q.transpose(-2, -1)) * scale, dim=-1)
    if head == "sclip":
        query_query = torch.softmax((q @ q.transpose(-2, -1)) * scale, dim=-1)
        return query_query + torch.softmax((k @ k.transpose(-2, -1)) * scale, dim=-1)
    if head == "naclip":
        omega = neighbourhood_bias(grid, NACLIP_GAUSSIAN_STD, k.device)
        logits = (k @ k.transpose(-2, -1)) * scale
        return torch.softmax(logits + omega.to(logits.dtype), dim=-1)
    raise ValueError(f"no attention for head {head!r}; expected sclip, clearclip or naclip")


def refined_last_block(block: nn.Module, x: torch.Tensor, head: str, grid: tuple[int, int]) -> torch.Tensor:
    """The last block of `head` (sclip, clearclip or naclip) on batch-first tokens x [B, 1 + gh * gw, C] -> same shape.

    `block` is an open_clip ResidualAttentionBlock whose `attn` is an nn.MultiheadAttention with packed in_proj.
    """
    attn = block.attn
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # [B, N, 3C], packed q, k, v
    q, k, v = (_per_head(part, attn.num_heads) for part in qkv.chunk(3, dim=-1))
    weights = _attention(head, q, k, grid)  # [B, heads, N, N]
    out = attn.out_proj((weights @ v).transpose(1, 2).flatten(2))  # [B, N, C], heads concatenated
    if head == "sclip":
        # SCLIP keeps the residual block around the new attention; layer scales (Identity for CLIP) stay put.
        y = x + block.ls_1(out)
        return y + block.ls_2(block.mlp(block.ln_2(y)))
    # ClearCLIP and NACLIP take the attention output alone ("reduced" block: no residual, no MLP, no layer scale).
    return out


def proxy_attention(proxy: torch.Tensor, beta: float = PROXY_BETA, gamma: float = PROXY_GAMMA) -> torch.Tensor:
    """ProxyCLIP's attention weights [B, h * w, h * w] float32 in [0, 1], rows summing to 1, from proxy features
    [B, C, h, w] (any dtype).

    `S = FT F` of the L2-normalised columns F [C, h * w] of each window, `S' = gamma (S - beta mean(S))`, entries
    below 0 set to -inf, softmax over the last axis. The mean is over each window's whole matrix (the authors'
    `mean(dim=(1, 2))`), so a batch of windows gives what each window gives alone. A row whose entries all fall
    below `beta mean(S)` (every row of a window whose features are all alike, `mean(S) > 1 / beta`; the row of a
    zero feature) is NaN in the authors' code; here it attends to its own patch only (one-hot on the diagonal).
    Every other row is the authors'.
    """
    features = F.normalize(proxy.flatten(2).float(), dim=1)  # [B, C, h * w], unit columns
    similarity = features.transpose(1, 2) @ features  # [B, h * w, h * w]
    # The authors' mean is over dims (1, 2): each window's whole matrix, never the batch's.
    similarity = (similarity - similarity.mean(dim=(1, 2), keepdim=True) * beta) * gamma
    cut = similarity < 0.0  # [B, h * w, h * w]
    empty = cut.all(dim=-1, keepdim=True)  # [B, h * w, 1]: rows the authors' softmax turns into NaN
    # Deviation (docs/method.md, "ProxyCLIP"): an empty row keeps its diagonal entry, so it attends to itself.
    own = torch.eye(cut.shape[-1], dtype=torch.bool, device=cut.device)
    cut = cut & ~(empty & own)
    if logger.isEnabledFor(logging.DEBUG):  # counting syncs a GPU: only when asked
        logger.debug(
            "ProxyCLIP: %d of %d attention rows fell below beta * mean; they attend to their own patch",
            int(empty.sum()),
            empty.numel(),
        )
    return torch.softmax(similarity.masked_fill(cut, float("-inf")), dim=-1)


def proxyclip_last_block(
    block: nn.Module,
    x: torch.Tensor,
    grid: tuple[int, int],
    proxy: torch.Tensor,
    beta: float = PROXY_BETA,
    gamma: float = PROXY_GAMMA,
) -> torch.Tensor:
    """ProxyCLIP's last block on batch-first tokens x [B, 1 + gh * gw, C] -> patch tokens [B, h * w, C] (no CLS).

    Args:
        block: the last open_clip ResidualAttentionBlock (nn.MultiheadAttention with packed in_proj).
        grid: the CLIP patch grid (gh, gw) of x. (The authors' code takes it as (W / p, H / p), right for their
            square windows only; the true grid is used here.)
        proxy: [B, C', h, w] proxy features of the same windows, on their own grid.
    """
    attn = block.attn
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # [B, N, 3C], packed q, k, v
    values = _per_head(qkv.chunk(3, dim=-1)[2][:, 1:], heads)  # [B, heads, gh * gw, d], CLS dropped
    batch, _, _, dim = values.shape
    # The authors' token_size is (W / p, H / p), right for square windows only: the true (gh, gw) is used here.
    values = values.reshape(batch * heads, grid[0], grid[1], dim).permute(0, 3, 1, 2)  # [B * heads, d, gh, gw]
    size = tuple(proxy.shape[-2:])
    values = F.interpolate(values, size=size, mode="bilinear", align_corners=False)
    values = values.permute(0, 2, 3, 1).reshape(batch, heads, size[0] * size[1], dim)  # [B, heads, h * w, d]
    weights = proxy_attention(proxy.to(values.device), beta, gamma).to(values.dtype)  # [B, h * w, h * w]
    out = (weights[:, None] @ values).transpose(1, 2).flatten(2)  # [B, h * w, C], heads concatenated
    # The attention output alone: no residual, no MLP, no layer scale (the authors' `custom_attn`).
    return attn.out_proj(out)
