"""Seconds per image by stage (backbones, patch LP, pixel LP) for a VOC-sized and a Cityscapes-sized image.

The backbones are the real architectures (ViT-B/16 CLIP and DINO) at random initialisation: the same
compute as the released weights, without needing them. The image is a smooth random picture; the class
list is VOC's (46 text rows with the background aliases) or Cityscapes' (19).

Usage::

    python tools/benchmark_eval.py                    # CPU
    python tools/benchmark_eval.py --device cuda --repeats 3
    python tools/benchmark_eval.py --small            # ViT-S backbones (quick check)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import class_names  # noqa: E402
from models import LPOSSBackbones  # noqa: E402
from segmentation import Segmentor, SegmentorSettings  # noqa: E402

CASES = {"voc": ("voc", 375, 500), "cityscapes": ("cityscapes", 1024, 2048)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=1, help="timed images per case (after one warm-up)")
    parser.add_argument("--small", action="store_true", help="ViT-S-16 / vit_small backbones instead of ViT-B/16")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    return parser.parse_args(argv)


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """``[H, W, 3]`` uint8 with photo-like smooth regions."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, height // 32 + 1, width // 32 + 1, generator=g)
    big = torch.nn.functional.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
    return (big[0].permute(1, 2, 0) * 255).round().byte().numpy()


def main(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    clip, dino = ("ViT-S-16", "vit_small_patch16_224.dino") if args.small else ("ViT-B-16", "vit_base_patch16_224.dino")
    model_cfg = {
        "clip": {"name": clip, "pretrained": None},
        "dino": {"name": dino, "pretrained": None},
        "dtype": "float32",
        "templates": "single",
    }
    backbones = LPOSSBackbones.from_config(model_cfg, device).eval()
    print(f"device {device} | backbones {clip} + {dino} (random init) | torch threads {torch.get_num_threads()}")
    print(f"{'image':<22}{'classes':>8}{'backbones':>11}{'patch LP':>10}{'pixel LP':>10}{'other':>8}{'total s':>9}")
    for case in args.cases:
        key, height, width = CASES[case]
        backbones.set_classes(class_names(key))
        segmentor = Segmentor(backbones, SegmentorSettings(pixel_refine=True), profile=True)
        image = smooth_image(height, width)
        segmentor.predict(image)  # warm-up
        segmentor.stage_seconds.clear()
        start = time.perf_counter()
        for _ in range(args.repeats):
            segmentor.predict(image)
        total = (time.perf_counter() - start) / args.repeats
        stages = {k: v / args.repeats for k, v in segmentor.stage_seconds.items()}
        other = total - sum(stages.values())
        rows = len(backbones.alias_to_class)
        print(
            f"{f'{case} {height}x{width}':<22}{rows:>8}{stages['backbones']:>11.2f}{stages['patch_lp']:>10.2f}"
            f"{stages['pixel_lp']:>10.2f}{other:>8.2f}{total:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
