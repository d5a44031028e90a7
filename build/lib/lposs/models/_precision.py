"""Mixed precision of the backbones: torch.autocast in a half type, or nothing at all for float32."""

import contextlib

import torch


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """`torch.autocast` on `device`'s type in `dtype` (bfloat16 / float16); a no-op for None or float32.

    The no-op keeps float32 runs bit-for-bit what they are without this context.
    """
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
