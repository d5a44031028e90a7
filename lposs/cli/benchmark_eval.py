"""Images per second and seconds per stage of LPOSS+ (backbones, patch LP, pixel LP, the rest) per image size.

The backbones are the real architectures (ViT-B/16 CLIP and DINO, or others named by ``--clip`` / ``--dino``) at
random initialisation: the same compute as the released weights, without needing them. Each case is a smooth random picture of a benchmark's typical
size with that benchmark's class list (the text rows include the background aliases). After ``--warmup``
images (1), ``--repeats`` images are timed; on CUDA the peak GPU memory of the case is reported too.

Cases: ``voc`` 375 x 500, C = 21 (46 text rows); ``coco_stuff`` 480 x 640, C = 171; ``cityscapes``
1024 x 2048, C = 19 (resized to 448 x 896); ``ade20k`` 512 x 2048, C = 150 (a wide image at the long-side cap,
resized to 448 x 1792: the largest working size the resize allows for a 512 short side).

Usage::

    python tools/benchmark_eval.py                                  # every case, on CUDA when there is one
    python tools/benchmark_eval.py --device cuda --repeats 5 --json bench.json
    python tools/benchmark_eval.py --cases voc coco_stuff --pixel_backend torch
    python tools/benchmark_eval.py --tiny --cases voc               # ViT-S, small image (smoke test)
    python tools/benchmark_eval.py --cases voc --dino vit_base_patch8_224.dino            # DINO ViT-B/8
    python tools/benchmark_eval.py --cases voc --clip ViT-L-14 --dino vit_large_patch14_reg4_dinov2.lvd142m
    python tools/benchmark_eval.py --cases voc --clip ViT-B-16-SigLIP2 --tokenizer /path/to/gemma_tokenizer
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lposs.datasets import class_names
from lposs.evaluation.device import apply_precision, make_current
from lposs.models import LPOSSBackbones
from lposs.segmentation import Segmentor, SegmentorSettings
from lposs.segmentation.kernels import pixel_backend_ran

CASES = {"voc": (375, 500), "coco_stuff": (480, 640), "cityscapes": (1024, 2048), "ade20k": (512, 2048)}
STAGES = ("backbones", "patch_lp", "pixel_lp", "other")
TINY_SIZE = (240, 320)  # with short_side 224: resized to 224 x 299, two windows
TINY_SETTINGS = {"short_side": 224, "long_side": 448}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=1, help="timed images per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed images first (compilation, caches)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--tiny", action="store_true", help=f"ViT-S backbones and {TINY_SIZE} images (smoke test)")
    parser.add_argument("--clip", default=None, help="open_clip model instead of ViT-B-16 (e.g. ViT-L-14)")
    parser.add_argument(
        "--dino", default=None, help="timm DINO model instead of ViT-B/16 (e.g. vit_base_patch8_224.dino)"
    )
    parser.add_argument("--head", default="maskclip", help="CLIP head (model.clip.head), e.g. proxyclip")
    parser.add_argument("--tokenizer", default=None, help="model.clip.tokenizer: a local Hugging Face tokenizer folder")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--pixel_backend", default=None, help="passed to SegmentorSettings.pixel_backend")
    parser.add_argument("--seed", type=int, default=0, help="random backbone weights and image")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--strict-float32", action="store_true", help="no TF32 anywhere (default: the paper's mode, torch defaults)"
    )
    return parser.parse_args(argv)


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """``[H, W, 3]`` uint8 with photo-like smooth regions."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, height // 32 + 1, width // 32 + 1, generator=g)
    big = torch.nn.functional.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
    return (big[0].permute(1, 2, 0) * 255).round().byte().numpy()


def backbone_names(tiny: bool, clip: str | None = None, dino: str | None = None) -> tuple[str, str]:
    """(CLIP, DINO) model names: ViT-B/16 (ViT-S/16 when ``tiny``) unless given."""
    default = ("ViT-S-16", "vit_small_patch16_224.dino") if tiny else ("ViT-B-16", "vit_base_patch16_224.dino")
    return clip or default[0], dino or default[1]


def build_backbones(
    tiny: bool,
    device: torch.device,
    dtype: str = "float32",
    seed: int = 0,
    clip: str | None = None,
    dino: str | None = None,
    head: str = "maskclip",
    tokenizer: str | None = None,
) -> LPOSSBackbones:
    """CLIP and DINO at random initialisation (ViT-B/16, or ViT-S/16 when ``tiny``, or the named ones), seeded;
    ``tokenizer``: SigLIP's Hugging Face tokenizer folder (model.clip.tokenizer)."""
    torch.manual_seed(seed)
    clip, dino = backbone_names(tiny, clip, dino)
    config = {
        "clip": {"name": clip, "pretrained": None, "head": head, "tokenizer": tokenizer},
        "dino": {"name": dino, "pretrained": None},
        "dtype": dtype,
        "templates": "single",  # one prompt per alias: text encoding is not what is measured
    }
    return LPOSSBackbones.from_config(config, device).eval()


def segmentor_settings(tiny: bool, pixel_backend: str | None = None) -> SegmentorSettings:
    """LPOSS+ with the paper's defaults (smaller resize when ``tiny``); ``pixel_backend`` if supported."""
    options: dict = {"pixel_refine": True, **(TINY_SETTINGS if tiny else {})}
    if pixel_backend is not None:
        if "pixel_backend" not in {f.name for f in dataclasses.fields(SegmentorSettings)}:
            raise ValueError("--pixel_backend: this version's SegmentorSettings has no pixel_backend setting")
        options["pixel_backend"] = pixel_backend
    return SegmentorSettings(**options)


def prediction_digest(labels: np.ndarray) -> str:
    """Short SHA-256 of an ``[H, W]`` label map (as int64), to compare runs."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()[:16]


def run_case(
    backbones: LPOSSBackbones,
    case: str,
    settings: SegmentorSettings,
    size: tuple[int, int],
    repeats: int = 1,
    warmup: int = 1,
) -> dict:
    """``warmup`` untimed, then ``repeats`` timed predictions of one smooth image; returns a JSON-ready dict."""
    backbones.set_classes(class_names(case))
    segmentor = Segmentor(backbones, settings, profile=True)
    image = smooth_image(*size)
    device = backbones.device
    for _ in range(warmup):
        segmentor.predict(image)  # kernel compilation, caches, allocator
    segmentor.stage_seconds.clear()
    warmup_peak = None
    if device.type == "cuda":
        warmup_peak = torch.cuda.max_memory_allocated(device) / 2**30  # warm-up images and whatever came before
        torch.cuda.reset_peak_memory_stats(device)
    repeats = max(repeats, 1)
    start = time.perf_counter()
    for _ in range(repeats):
        labels = segmentor.predict(image)  # ends with .cpu(): synchronised
    total = (time.perf_counter() - start) / repeats
    stages = {name: segmentor.stage_seconds.get(name, 0.0) / repeats for name in STAGES[:-1]}
    stages["other"] = total - sum(stages.values())  # resize, merging windows, alias max, final resize, argmax
    resized = segmentor.prepare(image).shape[1:]
    return {
        "case": case,
        "image_size": list(size),
        "resized_size": list(resized),
        "classes": len(backbones.class_names),
        "text_rows": len(backbones.alias_to_class),
        "seconds_per_image": total,
        "images_per_second": 1.0 / total,
        "stage_seconds": stages,
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "peak_gpu_memory_warmup_gb": warmup_peak,
        "prediction_sha256": prediction_digest(labels),
    }


def _row(result: dict) -> str:
    size = "x".join(map(str, result["image_size"]))
    stages = "".join(f"{result['stage_seconds'][name]:>10.3f}" for name in STAGES)
    memory = result["peak_gpu_memory_gb"]
    return (
        f"{result['case']:<11}{size:>10}{result['classes']:>5}{result['text_rows']:>6}{stages}"
        f"{result['seconds_per_image']:>9.3f}{result['images_per_second']:>8.2f}"
        f"{'-' if memory is None else f'{memory:.2f}':>8}  {result['prediction_sha256']}"
    )


def main(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    make_current(device)  # cuda:N: Triton's launches go to the current device
    precision = apply_precision(args.strict_float32)
    try:
        settings = segmentor_settings(args.tiny, args.pixel_backend)
    except (ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    backbones = build_backbones(
        args.tiny, device, args.dtype, args.seed, args.clip, args.dino, args.head, args.tokenizer
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    clip, dino = backbone_names(args.tiny, args.clip, args.dino)
    print(f"device {device} ({name}) | CLIP {clip} ({args.head}), DINO {dino}, random init | {args.dtype}")
    print(f"precision: {precision}")
    header = f"{'case':<11}{'size':>10}{'C':>5}{'rows':>6}" + "".join(f"{s:>10}" for s in STAGES)
    print(header + f"{'total s':>9}{'img/s':>8}{'peak GB':>8}  prediction")
    results = []
    for case in args.cases:
        size = TINY_SIZE if args.tiny else CASES[case]
        results.append(run_case(backbones, case, settings, size, args.repeats, args.warmup))
        results[-1]["pixel_backend"] = pixel_backend_ran(device, settings.pixel_backend)  # after any fallback
        print(_row(results[-1]), flush=True)
    print(f"pixel backend that ran: {pixel_backend_ran(device, settings.pixel_backend)}")
    if args.json is not None:
        report = {"device": str(device), "device_name": name, "tiny": args.tiny, "dtype": args.dtype}
        report.update(clip=clip, dino=dino, head=args.head)
        report["settings"] = dataclasses.asdict(settings)
        report["precision"] = precision
        # the whole process, warm-up images included (each case's own figure covers its timed images only)
        peaks = [r[key] for r in results for key in ("peak_gpu_memory_gb", "peak_gpu_memory_warmup_gb")]
        report["peak_gpu_memory_gb"] = max((p for p in peaks if p is not None), default=None)
        args.json.write_text(json.dumps({**report, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
