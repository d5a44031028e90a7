"""Dense patch features of open_clip CLIP towers on a timm trunk (docs/method.md, "Other backbones").

open_clip wraps EVA02, SigLIP / SigLIP2 and Perception Encoder (PE-Core) image towers as `TimmModel`: a timm trunk
(`timm.models.eva.Eva` or `timm.models.vision_transformer.VisionTransformer`), its `head` (the trunk's classifier
Linear, when open_clip uses it as the projection) and the tower's own `head` (an nn.Sequential, empty for these).
One reading per pooling kind:

- CLS-pooled trunk (EVA02, `global_pool='token'`): MaskCLIP's reading carried over to the last `EvaBlock`:
  `h = norm1(x)`, `v` its value projection (`v_proj`, or the third part of the fused `qkv` with its bias),
  `o = attn.proj(attn.norm(v))` (times the sigmoid gate and `gamma_1` where the block has them); no residual, no MLP;
  then the trunk's `norm`, prefix tokens dropped, `fc_norm`, the trunk's `head`, the tower's `head`.
- Attention-pool trunk (SigLIP / SigLIP2, PE-Core: `AttentionPoolLatent`): every block as usual, the trunk's `norm`;
  per patch token t (prefix dropped) `attn_pool.proj(v(t))`, v the value half of `attn_pool.kv`, then `fc_norm` and
  both heads: TextRegion's region feature (avaxiao/TextRegion `siglip_value_with_sam2_attn`,
  `pe_value_with_sam2_attn`) for a one-patch region, without the pool's norm + MLP residual, as there.

Absolute position embeddings and RoPE are computed for each window's own grid, as timm does with
`dynamic_img_size=True`. The timm internals relied on are asserted by `check_timm_tower`, so a layout change in a
future timm fails loudly instead of silently changing the features.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from open_clip.timm_model import TimmModel
from timm.layers import AttentionPoolLatent, PatchEmbed, resample_abs_pos_embed
from timm.layers.pos_embed_sincos import RotaryEmbeddingCat
from timm.models.eva import Eva, EvaAttention, EvaBlock
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ._image import check_images, pad_and_normalize, tokens_to_map

# The two readings, named by the trunk's pooling.
CLS_POOLED, ATTENTION_POOLED = "cls", "attention_pool"


def _layout_error(what: str) -> ValueError:
    return ValueError(f"timm CLIP tower: unsupported layout, {what}")


def is_timm_tower(visual: nn.Module) -> bool:
    """True for an open_clip `TimmModel` image tower (EVA02, SigLIP, PE-Core...)."""
    return isinstance(visual, TimmModel)


def _check_embedding(trunk: nn.Module) -> None:
    embed = trunk.patch_embed
    if type(embed) is not PatchEmbed or not isinstance(embed.proj, nn.Conv2d) or not embed.flatten:
        raise _layout_error("expected timm's PatchEmbed with a Conv2d `proj` and flattened output")
    patch = tuple(embed.patch_size)
    if patch[0] != patch[1] or tuple(embed.proj.kernel_size) != patch or tuple(embed.proj.stride) != patch:
        raise _layout_error(f"expected a square patch conv with kernel = stride = patch, got {patch}")
    if getattr(embed, "dynamic_img_pad", False):
        raise _layout_error("dynamic_img_pad is not read here (windows are padded black before normalising)")
    if isinstance(trunk, Eva):
        if trunk.rope is not None and (trunk.rope_mixed or not isinstance(trunk.rope, RotaryEmbeddingCat)):
            raise _layout_error(f"expected no RoPE or timm's RotaryEmbeddingCat, got {type(trunk.rope).__name__}")
        if trunk.rope is not None and not hasattr(trunk.rope, "_build_embed_cat"):
            raise _layout_error("RotaryEmbeddingCat without `_build_embed_cat` (timm's dynamic-size RoPE)")


def _check_cls_block(trunk: nn.Module) -> None:
    block = trunk.blocks[-1]
    if type(block) is not EvaBlock or type(block.attn) is not EvaAttention:
        raise _layout_error(f"CLS-pooled trunk: expected a last EvaBlock with EvaAttention, got {type(block).__name__}")
    attn = block.attn
    if (attn.qkv is None) == (attn.v_proj is None):
        raise _layout_error("EvaAttention: expected either a fused `qkv` or separate `v_proj`")
    if trunk.num_prefix_tokens < 1 or trunk.global_pool != "token":
        raise _layout_error(
            f"CLS-pooled trunk: expected global_pool 'token' with a CLS token, got {trunk.global_pool!r}"
        )


def _check_attention_pool(trunk: nn.Module) -> None:
    pool = trunk.attn_pool
    if type(pool) is not AttentionPoolLatent or pool.latent_len != 1 or pool.pos_embed is not None:
        raise _layout_error("expected timm's AttentionPoolLatent with one latent and no position embedding")
    width = pool.kv.in_features
    if pool.kv.out_features != 2 * width or not isinstance(pool.proj, nn.Linear) or pool.proj.in_features != width:
        raise _layout_error(f"attn_pool: expected kv {width} -> {2 * width} (k then v) and a Linear proj")


def check_timm_trunk(trunk: nn.Module) -> str:
    """The reading of a timm trunk, CLS_POOLED or ATTENTION_POOLED; ValueError (one line) unless it has the layout read
    here (a timm Eva or VisionTransformer with a plain patch conv; an attention pool, or a last EvaBlock and CLS)."""
    if not isinstance(trunk, (Eva, VisionTransformer)):
        raise _layout_error(f"expected a timm Eva or VisionTransformer trunk, got {type(trunk).__name__}")
    _check_embedding(trunk)
    if getattr(trunk, "attn_pool", None) is not None:
        _check_attention_pool(trunk)
        return ATTENTION_POOLED
    _check_cls_block(trunk)
    return CLS_POOLED


def check_timm_tower(visual: nn.Module) -> str:
    """`check_timm_trunk` of an open_clip TimmModel tower, whose own head must be a plain projection (or empty)."""
    if not is_timm_tower(visual):
        raise _layout_error(f"expected open_clip's TimmModel, got {type(visual).__name__}")
    if not all(isinstance(layer, (nn.Dropout, nn.Linear)) for layer in visual.head):
        raise _layout_error("the tower's head holds more than a projection (open_clip's attention pools)")
    return check_timm_trunk(visual.trunk)


def timm_patch_size(visual: nn.Module) -> int:
    """The (square) patch size of a TimmModel tower's trunk: 16 for EVA02-B-16, SigLIP2 B/16, PE-Core-B-16."""
    return int(visual.trunk.patch_embed.patch_size[0])


def tower_mean_std(visual: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the tower was trained with, from open_clip's `visual.preprocess_cfg` (set by `build_clip` from the
    pretrained tag, else from the timm trunk's `pretrained_cfg`); SigLIP's and PE's are 0.5 / 0.5."""
    cfg = getattr(visual, "preprocess_cfg", None)
    if not isinstance(cfg, dict) or len(cfg.get("mean", ())) != 3 or len(cfg.get("std", ())) != 3:
        raise _layout_error("no `preprocess_cfg` with a 3-channel mean and std on the tower")
    return tuple(cfg["mean"]), tuple(cfg["std"])


def _window_position(trunk: nn.Module, grid: tuple[int, int]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(absolute position embedding [1, N', C] or None, RoPE [gh * gw, 2 * d] or None) for the window's grid, as timm
    computes them with dynamic_img_size=True (bicubic resample of the table; RoPE built for the grid)."""
    native = tuple(trunk.patch_embed.grid_size)
    pos = trunk.pos_embed
    if pos is not None and grid != native:
        prefix = 0 if trunk.no_embed_class else trunk.num_prefix_tokens
        pos = resample_abs_pos_embed(pos, new_size=grid, old_size=native, num_prefix_tokens=prefix)
    rope = getattr(trunk, "rope", None)
    if rope is None:
        return pos, None
    if rope.feat_shape is not None and tuple(rope.feat_shape) == grid:
        return pos, rope.get_embed()
    return pos, rope._build_embed_cat(list(grid), rope.bands)  # timm's dynamic-size path (get_embed(shape))


def _embed(trunk: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
    """Patch tokens with prefix tokens and position embeddings, then `norm_pre`: ([B, P + gh * gw, C], rope, grid)."""
    x = trunk.patch_embed.proj(x)  # [B, C, gh, gw]
    grid = (int(x.shape[-2]), int(x.shape[-1]))
    x = trunk.patch_embed.norm(x.flatten(2).transpose(1, 2))  # [B, gh * gw, C]
    pos, rope = _window_position(trunk, grid)
    prefix = [t.to(x.dtype).expand(x.shape[0], -1, -1) for t in (trunk.cls_token, trunk.reg_token) if t is not None]
    if trunk.no_embed_class:  # the table covers the patches only: added before the prefix is put in front
        x = torch.cat([*prefix, x + pos.to(x.dtype)] if pos is not None else [*prefix, x], dim=1)
    else:
        x = torch.cat([*prefix, x], dim=1)
        x = x + pos.to(x.dtype) if pos is not None else x
    return trunk.norm_pre(x), rope, grid  # pos_drop and patch_drop are identities in eval mode


def _run(trunk: nn.Module, x: torch.Tensor, rope: torch.Tensor | None, blocks: Sequence[nn.Module]) -> torch.Tensor:
    for block in blocks:
        x = block(x, rope=rope) if isinstance(trunk, Eva) else block(x)
    return x


def _cls_last_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's reading of an EvaBlock: the value path alone, no residual, no MLP. x [B, N, C] -> [B, N, C]."""
    attn = block.attn
    h = block.norm1(x)
    if attn.qkv is not None:  # fused: q, k, v blocks of the output, each with heads concatenated
        bias = None if attn.q_bias is None else torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        v = F.linear(h, attn.qkv.weight, bias).chunk(3, dim=-1)[2]
    else:
        v = attn.v_proj(h)
    v = attn.norm(v)  # EVA02-CLIP's sub-LN inside the attention (scale_attn_inner), before the projection
    if attn.gate is not None:
        v = v * attn.gate(h).sigmoid()
    out = attn.proj(v)
    return out if block.gamma_1 is None else block.gamma_1 * out


def _heads(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """fc_norm, the trunk's head (open_clip's projection when it uses it) and the tower's head: [B, L, C] -> [B, L, E]."""
    trunk = visual.trunk
    return visual.head(trunk.head(trunk.fc_norm(tokens)))  # head_drop is the identity in eval mode


@torch.no_grad()
def dense_timm_clip_features(clip_model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Dense patch features of a CLIP whose image tower is a timm trunk (module docstring), not normalised.

    Args:
        clip_model: open_clip CLIP model with a `TimmModel` visual tower (any dtype).
        images: [B, 3, H, W] float RGB in [0, 1], any device (moved to the model's); padded with black to a multiple
            of the patch size p, normalised with the tower's own mean / std (`tower_mean_std`).

    Returns:
        [B, E, ceil(H / p), ceil(W / p)] float32, E = CLIP embedding dim; computed in the model's dtype.
    """
    check_images(images, "dense_timm_clip_features")
    visual = clip_model.visual
    reading = check_timm_tower(visual)
    trunk = visual.trunk
    mean, std = tower_mean_std(visual)
    weight = trunk.patch_embed.proj.weight
    x = pad_and_normalize(images.to(weight.device), mean, std, weight.dtype, timm_patch_size(visual))
    x, rope, grid = _embed(trunk, x)
    prefix = trunk.num_prefix_tokens
    if reading == CLS_POOLED:
        x = _run(trunk, x, rope, trunk.blocks[:-1])
        x = trunk.norm(_cls_last_block(trunk.blocks[-1], x))[:, prefix:]  # [B, gh * gw, C]
    else:
        x = trunk.norm(_run(trunk, x, rope, trunk.blocks))[:, prefix:]
        pool = trunk.attn_pool
        x = pool.proj(pool.kv(x).chunk(2, dim=-1)[1])  # value half, heads concatenated: [B, gh * gw, C]
    return tokens_to_map(_heads(visual, x).float(), grid)
