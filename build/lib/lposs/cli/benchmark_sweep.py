"""A 12-setting label-propagation sweep against 12 separate runs on the same images, in one process.

The sweep encodes every image once (resize, windows, backbones) and propagates it with each setting, as
``main_eval.py --sweep`` does; the separate runs encode every image once per setting. Both give the same
labels (checked). The backbones are the real architectures at random initialisation (ViT-B/16, or ViT-S
with ``--small``); the images are smooth random pictures; the classes are VOC's (46 text rows).

Usage::

    python tools/benchmark_sweep.py                          # CPU, ViT-B/16, 4 VOC-sized images
    python tools/benchmark_sweep.py --device cuda --images 16
    python tools/benchmark_sweep.py --small --images 1 --size 32 48 --short_side 32 --k 5 --alpha 0.9  # smoke test
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import numpy as np
import torch

from lposs.cli.benchmark_eval import smooth_image
from lposs.datasets import class_names
from lposs.evaluation.device import make_current
from lposs.models import LPOSSBackbones
from lposs.segmentation import Segmentor, SegmentorSettings


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="ViT-S-16 / vit_small backbones instead of ViT-B/16")
    parser.add_argument("--images", type=int, default=4, help="number of images")
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"), help="image size")
    parser.add_argument("--short_side", type=int, default=448, help="resize target (the paper's 448)")
    parser.add_argument("--k", type=_ints, default=[100, 200, 400], help="comma list (default 100,200,400)")
    parser.add_argument("--alpha", type=_floats, default=[0.9, 0.95], help="comma list (default 0.9,0.95)")
    parser.add_argument("--tau", type=_floats, default=[0.005, 0.01], help="comma list (default 0.005,0.01)")
    return parser.parse_args(argv)


def grid(args: argparse.Namespace) -> list[SegmentorSettings]:
    """LPOSS+ settings: every (k, alpha, tau) combination (12 with the defaults)."""
    return [
        SegmentorSettings(pixel_refine=True, short_side=args.short_side, k=k, alpha=alpha, tau=tau)
        for k, alpha, tau in itertools.product(args.k, args.alpha, args.tau)
    ]


def run_sweep(backbones, settings: list[SegmentorSettings], images: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Encode each image once, propagate it with every setting; labels ``[setting][image]``."""
    segmentor = Segmentor(backbones, settings[0])
    labels: list[list[np.ndarray]] = [[] for _ in settings]
    for image in images:
        encoding = segmentor.encode(image)
        for j, setting in enumerate(settings):
            labels[j].append(segmentor.propagate(encoding, setting).argmax(0).cpu().numpy())
    return labels


def run_separately(backbones, settings: list[SegmentorSettings], images: list[np.ndarray]) -> list[list[np.ndarray]]:
    """One full run (encode + propagate every image) per setting; labels ``[setting][image]``."""
    return [[Segmentor(backbones, setting).predict(image) for image in images] for setting in settings]


def _timed(function, *args) -> tuple[float, object]:
    device = args[0].device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = function(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def main(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    make_current(device)  # cuda:N: Triton's launches go to the current device
    clip, dino = ("ViT-S-16", "vit_small_patch16_224.dino") if args.small else ("ViT-B-16", "vit_base_patch16_224.dino")
    model_cfg = {
        "clip": {"name": clip, "pretrained": None},
        "dino": {"name": dino, "pretrained": None},
        "dtype": "float32",
        "templates": "single",
    }
    backbones = LPOSSBackbones.from_config(model_cfg, device).eval()
    backbones.set_classes(class_names("voc"))
    images = [smooth_image(*args.size, seed=i) for i in range(args.images)]
    settings = grid(args)
    run_sweep(backbones, settings[:1], images[:1])  # warm-up (kernels, caches)
    sweep_seconds, sweep_labels = _timed(run_sweep, backbones, settings, images)
    separate_seconds, separate_labels = _timed(run_separately, backbones, settings, images)
    same = all(np.array_equal(a, b) for xs, ys in zip(sweep_labels, separate_labels) for a, b in zip(xs, ys))
    print(f"device {device} | backbones {clip} + {dino} (random init) | torch threads {torch.get_num_threads()}")
    print(f"{len(settings)} settings x {len(images)} images of {args.size[0]}x{args.size[1]}")
    print(f"sweep (one encoding per image)  {sweep_seconds:9.2f} s")
    print(f"{len(settings)} separate runs            {separate_seconds:9.2f} s")
    print(f"ratio separate / sweep          {separate_seconds / sweep_seconds:9.2f}")
    print(f"sweep / one run                 {sweep_seconds * len(settings) / separate_seconds:9.2f}")
    print(f"labels equal                    {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(parse_args()))
