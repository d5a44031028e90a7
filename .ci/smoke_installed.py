"""Smoke test of an installed lposs (pip install ., not the checkout): run from a folder outside the repository.

Checks that the package, its configs and its C++ source were installed: import, the one-line API on tiny
random-weight backbones (ViT-S/16, no download) on a generated image, the CPU kernels built from the installed
source, and that nothing came from the checkout.
"""

import os
import sys
from pathlib import Path

import numpy as np

os.environ["LPOSS_CPU_KERNEL"] = "require"  # a kernel that fails to build fails here, not silently
import lposs  # noqa: E402
from lposs.segmentation.kernels.cpu import cpu_kernels_for  # noqa: E402

checkout = Path(sys.argv[1]).resolve()
package = Path(lposs.__file__).resolve().parent
assert checkout not in package.parents, f"lposs imported from the checkout ({package}), not the installed copy"
assert (package / "configs" / "lposs_plus.yaml").is_file() and (package / "segmentation/kernels/cpu.cpp").is_file()

tiny = {
    "model.clip.name": "ViT-S-16",
    "model.clip.pretrained": None,
    "model.dino.name": "vit_small_patch16_224.dino",
    "model.dino.pretrained": None,
    "model.templates": "single",
    "short_side": 48,
    "crop": 64,
    "stride": 32,
}
seg = lposs.load("lposs_plus", classes=["sky;cloud", "tree", "person"], device="cpu", overrides=tiny)
y, x = np.mgrid[0:40, 0:56]
image = (np.stack([x * 4, y * 5, (x + y) * 2], axis=-1) % 256).astype(np.uint8)
labels = seg.predict(image)
assert labels.shape == (40, 56) and labels.dtype == np.int64 and 0 <= labels.min() and labels.max() < 3
import torch  # noqa: E402

assert cpu_kernels_for(torch.zeros(1)) is not None, "the CPU kernels did not build from the installed source"
print(f"installed lposs {lposs.__version__} at {package}: load, predict and CPU kernels work")
