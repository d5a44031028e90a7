"""``--dataset voc,voc20`` in one run against ``--dataset voc`` and ``--dataset voc20`` run one after the other.

voc and voc20 list the same images, so the one run makes a single pass over them (each image decoded, encoded
by the backbones and given its graphs once) for both datasets. Each arm runs ``main_eval.py`` as a user does, in
a process of its own, on the same images: smooth random pictures of VOC size in a VOC-layout folder written
here (or a real one with ``--data_root``). The backbones are the real architectures at random initialisation
(ViT-B/16, or ViT-S with ``--small``), so no weights are needed. A first run of one image, not timed, fills the
text-embedding cache and builds the CPU kernels. The metrics of the two arms are checked to be equal.

Printed: the wall time of each run (process start, model build and all), the pass time each run logs, and the
ratios shared / separate (the target is 0.6 or less; 0.5 is the backbones' share alone).

Usage::

    python tools/benchmark_shared_pass.py                        # CPU, ViT-B/16, 3 images of 375 x 500
    python tools/benchmark_shared_pass.py --images 8 --config lposs.yaml
    python tools/benchmark_shared_pass.py --data_root /data      # the first --images real VOC images
    python tools/benchmark_shared_pass.py --small --images 1 --size 48 64 short_side=48 crop=64 r=5  # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lposs.cli.benchmark_eval import smooth_image

METRICS = ("mIoU", "IoU", "aAcc", "num_images")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="lposs_plus.yaml", help="main_eval.py config (default LPOSS+)")
    parser.add_argument("--device", default="cpu", help="config value device (default cpu)")
    parser.add_argument("--small", action="store_true", help="ViT-S-16 / vit_small backbones instead of ViT-B/16")
    parser.add_argument("--images", type=int, default=3, help="number of images")
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"), help="generated size")
    parser.add_argument("--data_root", type=Path, help="a data root holding VOCdevkit/VOC2012 (default: generated)")
    parser.add_argument(
        "--in_process",
        action="store_true",
        help="run each arm in this process (no process start in the wall time; for smoke tests)",
    )
    parser.add_argument("overrides", nargs="*", help="more key=value config overrides for every run")
    return parser.parse_args(argv)


def write_voc_layout(root: Path, images: int, size: tuple[int, int]) -> None:
    """``images`` smooth pictures with random labels in the VOC2012 layout under ``root``."""
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    names = [f"image_{i:03d}" for i in range(images)]
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        Image.fromarray(smooth_image(*size, seed=i)).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
        Image.fromarray(rng.integers(0, 21, size=size).astype(np.uint8)).save(voc / "SegmentationClass" / f"{name}.png")
    (voc / "ImageSets/Segmentation/val.txt").write_text("".join(f"{name}\n" for name in names))


def evaluate(datasets: str, output: Path, common: list[str], in_process: bool = False) -> tuple[float, float]:
    """One ``main_eval.py`` run (its own process, or this one); (wall seconds, seconds of its passes as logged)."""
    argv = [*common, "--dataset", datasets, "--output", str(output)]
    start = time.perf_counter()
    if in_process:
        from lposs.cli import main_eval

        code, error = main_eval.main(main_eval.parse_args(argv)), "see the log above"
    else:
        done = subprocess.run([sys.executable, "-m", "lposs.cli.main_eval", *argv], capture_output=True, text=True)
        code, error = done.returncode, done.stderr.strip()[-2000:]
    wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"main_eval.py --dataset {datasets} failed: {error}")
    passes = re.findall(r"setting\(s\) in ([0-9.]+) s", (output / "eval.log").read_text())
    return wall, sum(float(seconds) for seconds in passes)


def main(args: argparse.Namespace) -> int:
    clip, dino = ("ViT-S-16", "vit_small_patch16_224.dino") if args.small else ("ViT-B-16", "vit_base_patch16_224.dino")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        os.environ.setdefault("LPOSS_CACHE_DIR", str(tmp_path / "cache"))  # the text embeddings of the warm-up
        data_root = args.data_root
        if data_root is None:
            data_root = tmp_path / "data"
            write_voc_layout(data_root, args.images, tuple(args.size))
        common = [
            args.config,
            f"data_root={data_root}",
            f"device={args.device}",
            f"model.clip.name={clip}",
            "model.clip.pretrained=null",
            f"model.dino.name={dino}",
            "model.dino.pretrained=null",
            "model.templates=single",  # text encoding is not what is measured
            "--limit",
            str(args.images),
            *args.overrides,
        ]
        evaluate("voc,voc20", tmp_path / "warmup", [*common, "--limit", "1"], args.in_process)
        shared = evaluate("voc,voc20", tmp_path / "shared", common, args.in_process)
        alone = [evaluate(key, tmp_path / key, common, args.in_process) for key in ("voc", "voc20")]
        same = True
        for key in ("voc", "voc20"):
            ours = json.loads((tmp_path / "shared" / key / "results.json").read_text())
            theirs = json.loads((tmp_path / key / "results.json").read_text())
            same &= all(ours[m] == theirs[m] for m in METRICS)
    separate = [sum(times) for times in zip(*alone)]
    print(f"device {args.device} | backbones {clip} + {dino} (random init) | {args.config} | {args.images} images")
    print(f"{'':28s}{'wall s':>10s}{'passes s':>10s}")
    print(f"{'voc,voc20 (one run)':28s}{shared[0]:10.2f}{shared[1]:10.2f}")
    for key, times in zip(("voc", "voc20"), alone):
        print(f"{key + ' alone':28s}{times[0]:10.2f}{times[1]:10.2f}")
    print(f"{'voc + voc20 (two runs)':28s}{separate[0]:10.2f}{separate[1]:10.2f}")
    ratios = [one / two if two > 0 else float("nan") for one, two in zip(shared, separate)]
    print(f"{'ratio one run / two runs':28s}{ratios[0]:10.2f}{ratios[1]:10.2f}")
    print(f"metrics equal {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(parse_args()))
