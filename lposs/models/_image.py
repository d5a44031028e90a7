"""Input checks, padding and normalisation shared by the CLIP and DINO feature extractors."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

PATCH_SIZE = 16  # the paper's backbones' patch size (ViT-B/16): the default padding multiple


def check_images(images: torch.Tensor, who: str) -> None:
    """Raise ValueError unless `images` is a float tensor [B, 3, H, W]."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{who}: expected images as a tensor [B, 3, H, W], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"{who}: expected float images in [0, 1], got dtype {images.dtype}")


def pad_and_normalize(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype,
    multiple: int = PATCH_SIZE,
) -> torch.Tensor:
    """Zero-pad bottom/right to a multiple of `multiple`, then normalise with mean/std.

    Padding happens in [0, 1] space *before* normalising, so the padded pixels are black
    (docs/method.md, "Pipeline", steps 4 and 6), not the mean colour.

    Args:
        images: [B, 3, H, W] float in [0, 1].
        mean, std: per-channel constants (3 values each).
        dtype: dtype of the returned tensor (the backbone's dtype).
        multiple: pad H and W up to a multiple of this.

    Returns:
        [B, 3, ceil(H / multiple) * multiple, ceil(W / multiple) * multiple] in `dtype`.
    """
    height, width = images.shape[-2:]
    pad_h = -height % multiple
    pad_w = -width % multiple
    x = F.pad(images.float(), (0, pad_w, 0, pad_h), value=0.0)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return ((x - mean_t) / std_t).to(dtype)


def tokens_to_map(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Reshape patch tokens [B, gh * gw, C] (row-major) to a map [B, C, gh, gw]."""
    batch, _, channels = tokens.shape
    return tokens.reshape(batch, grid[0], grid[1], channels).permute(0, 3, 1, 2).contiguous()
