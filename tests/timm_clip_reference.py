"""References for the dense features of CLIP towers on timm trunks, written from timm's, open_clip's and TextRegion's
code (read, not copied) and independent of `lposs.models.timm_clip`.

The trunk runs as timm runs it with `dynamic_img_size=True` (a twin built so, holding the tower's weights): timm's
own position-embedding resampling and RoPE for the window's grid. The readings go through timm's own attention
modules with an attention mask:

- CLS-pooled (EVA02): MaskCLIP = every token attends to itself only. The last block's `attn` is called on
  `norm1(x)` with a mask that is 0 on the diagonal and -inf elsewhere, so its output is `proj(norm(v))`; times
  `gamma_1`; no residual, no MLP.
- Attention pool (SigLIP2, PE-Core): TextRegion's `siglip_value_with_sam2_attn` / `pe_value_with_sam2_attn` give a
  region the pool's attention restricted to the region's patches with equal weights (a constant key); for a region
  of one patch t the latent query attends to t alone: the masked attention over the value half of `kv`, then `proj`,
  no norm + MLP residual.
Both then: the trunk's `fc_norm`, its `head`, the tower's `head`.
"""

import timm
import torch
import torch.nn.functional as F
from torch import nn


def dynamic_twin(trunk_name: str, visual: nn.Module) -> nn.Module:
    """timm model `trunk_name` built with dynamic_img_size=True as open_clip built the tower's trunk, its weights."""
    trunk = visual.trunk
    twin = timm.create_model(
        trunk_name, num_classes=trunk.num_classes, global_pool=trunk.global_pool, dynamic_img_size=True
    )
    twin.load_state_dict(trunk.state_dict())
    return twin.eval()


def normalised_input(images: torch.Tensor, mean: tuple, std: tuple, patch: int) -> torch.Tensor:
    """Black padding to a multiple of the patch, then (x - mean) / std: [B, 3, H', W']."""
    height, width = images.shape[-2:]
    padded = F.pad(images, (0, -width % patch, 0, -height % patch))
    return (padded - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _last_block_input(twin: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    captured = {}

    def grab(_module, args, kwargs):
        captured["x"], captured["kwargs"] = args[0], kwargs

    handle = twin.blocks[-1].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        twin.forward_features(x)
    finally:
        handle.remove()
    return captured["x"], captured["kwargs"]


def _heads(visual: nn.Module, twin: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return visual.head(twin.head(twin.fc_norm(tokens)))


@torch.no_grad()
def reference_cls_features(twin: nn.Module, visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B, gh * gw, E]: MaskCLIP's last block as a self-only attention of timm's EvaBlock, on normalised x."""
    tokens, kwargs = _last_block_input(twin, x)
    block = twin.blocks[-1]
    count = tokens.shape[1]
    self_only = torch.full((count, count), float("-inf")).fill_diagonal_(0.0)
    out = block.attn(block.norm1(tokens), rope=kwargs.get("rope"), attn_mask=self_only)
    if block.gamma_1 is not None:
        out = block.gamma_1 * out
    return _heads(visual, twin, twin.norm(out)[:, twin.num_prefix_tokens :])


@torch.no_grad()
def reference_pool_features(twin: nn.Module, visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B, gh * gw, E]: the pool's latent query restricted to one patch per region (TextRegion), on normalised x."""
    patches = twin.forward_features(x)[:, twin.num_prefix_tokens :]  # after the trunk's norm
    pool = twin.attn_pool
    batch, count, width = patches.shape
    heads, dim = pool.num_heads, pool.head_dim
    query = pool.q(pool.latent).reshape(1, heads, 1, dim).expand(batch, heads, count, dim)  # one query per region
    kv = pool.kv(patches).reshape(batch, count, 2, heads, dim).permute(2, 0, 3, 1, 4)  # [2, B, heads, N, d]
    key, value = pool.k_norm(kv[0]), kv[1]
    region = torch.eye(count, dtype=torch.bool)  # region t holds patch t alone
    out = F.scaled_dot_product_attention(pool.q_norm(query), key, value, attn_mask=region)
    out = pool.proj(out.transpose(1, 2).reshape(batch, count, width))
    return _heads(visual, twin, out)
