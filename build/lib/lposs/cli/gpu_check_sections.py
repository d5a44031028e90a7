"""The sections of ``tools/gpu_check.py``: each takes a ``Context`` and returns a JSON-ready dict of what it
measured, or raises ``Skipped`` (cannot run here) or ``CheckFailed`` (ran, and a check did not hold)."""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout: tests/ for the GPU tests, the data beside it

TOLERANCE = 1e-4  # relative: max |cpu - gpu| / max |cpu|, float32 against float32 (strict mode)
# End to end in the users' (the paper's) mode, cuDNN convolutions may run in TF32: its inputs keep 10 mantissa bits
# (unit roundoff 2^-11 = 4.9e-4), so each patch-embedding output can move by about 1e-3 of the sum of its terms'
# magnitudes; through 12 blocks of normalised residual layers and both propagations that stays near that level.
# Ten times the unit roundoff leaves room for the accumulation; a GPU run reports the measured value beside it.
USERS_MODE_TOLERANCE = 10 * 2.0**-11
# Sections that compare a stage on the device with the CPU run in strict float32 (no TF32): the comparison is then
# of float32 against float32. The end-to-end, determinism and benchmark sections run in the users' mode.
STRICT_SECTIONS = ("metrics", "patch_lp", "pixel_lp", "backbones")
# Measured on an H200 (random-init ViT-B/16, voc_sample_0001): 365 of 1,764 patches had their k-th and (k+1)-th
# neighbour within 1e-6 of similarity, so 110 rows picked other neighbours on the GPU than on the CPU, the patch
# graph differed by 0.8 % and the scores by 1.8e-4 while every stage alone agreed to 1e-5 and every label was the
# same. Where the CPU's and the device's features (about 2e-6 apart) can reorder a k-th neighbour, the graph is not
# determined by float32 and only the labels are compared.
KNN_TIE_GAP = 1e-5
TIED_GRAPH_LABEL_FRACTION = 1e-3  # labels that may differ on an image whose kNN graph has near-ties
VOC_MINI = Path("voc_mini/VOCdevkit/VOC2012")


class Skipped(Exception):
    """The section cannot run here (no GPU, no data); the message says why."""


class CheckFailed(Exception):
    """The section ran and a check did not hold; ``details`` keeps the measurements."""

    def __init__(self, message: str, details: dict) -> None:
        super().__init__(message)
        self.details = details


@dataclass
class Context:
    device: torch.device
    tiny: bool
    data: Path
    output: Path


# ---------------------------------------------------------------------------------------------- helpers


def relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """``max |ours - reference| / max |reference|`` (both moved to the CPU in float64)."""
    ours, reference = ours.detach().cpu().double(), reference.detach().cpu().double()
    return float((ours - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def set_precision(section: str) -> str:
    """Strict float32 for the stage-wise comparisons (``STRICT_SECTIONS``), the users' mode (the config default,
    ``strict_float32: false``) for everything else; returns the mode's description."""
    from lposs.evaluation.device import apply_precision

    return apply_precision(section in STRICT_SECTIONS)


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic kernels as ``main_eval.py`` asks for them on CUDA; the previous state restored after."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = benchmark


def compare(details: dict, name: str, ours: torch.Tensor, reference: torch.Tensor) -> None:
    details[name] = relative_difference(ours, reference)


def require_within(details: dict, what: str, tolerance: float = TOLERANCE) -> dict:
    """Raise ``CheckFailed`` when a relative difference in ``details`` exceeds ``tolerance``."""
    worst = {k: v for k, v in details.items() if isinstance(v, float) and v > tolerance}
    if worst:
        raise CheckFailed(f"{what}: relative difference above {tolerance:g}: {worst}", details)
    return details


@functools.lru_cache(maxsize=2)
def _backbone_pair(tiny: bool, device: str):
    from lposs.cli.benchmark_eval import build_backbones

    cpu = build_backbones(tiny, torch.device("cpu"))
    return cpu, cpu if device == "cpu" else copy.deepcopy(cpu).to(device)


def backbone_pair(ctx: Context):
    """The same random-init backbones on the CPU and on the device (weights copied, not re-drawn); built once
    per process (sections run in one process share them). With ``--device cpu`` both are one model."""
    return _backbone_pair(ctx.tiny, str(ctx.device))


def settings(ctx: Context):
    """LPOSS+ with the paper's settings; with ``--tiny`` images are resized to a 112 short side (one window)."""
    from lposs.segmentation import SegmentorSettings

    return SegmentorSettings(pixel_refine=True, **({"short_side": 112, "long_side": 224} if ctx.tiny else {}))


def smooth_windows(count: int, seed: int = 0) -> torch.Tensor:
    """``[count, 3, 224, 224]`` smooth random windows in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(count, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(small, size=(224, 224), mode="bilinear", align_corners=False)


def voc_mini_images(ctx: Context) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, image [H, W, 3] uint8, label [H, W])`` of voc_mini's val list; ``Skipped`` when absent."""
    from PIL import Image

    root = ctx.data / VOC_MINI
    split = root / "ImageSets/Segmentation/val.txt"
    if not split.is_file():
        raise Skipped(f"no VOC images: {split} not found (pass --data DIR holding voc_mini/)")
    names = split.read_text().split()
    return [
        (
            n,
            np.asarray(Image.open(root / "JPEGImages" / f"{n}.jpg").convert("RGB")),
            np.asarray(Image.open(root / "SegmentationClass" / f"{n}.png")),
        )
        for n in names
    ]


# --------------------------------------------------------------------------------------------- sections


def section_environment(ctx: Context) -> dict:
    details = {"torch": torch.__version__, "python": platform.python_version(), "cpu_threads": torch.get_num_threads()}
    details["device"] = str(ctx.device)
    if ctx.device.type == "cuda":
        details["device_name"] = torch.cuda.get_device_name(ctx.device)
        details["cuda"] = torch.version.cuda
        details["gpu_memory_gb"] = torch.cuda.get_device_properties(ctx.device).total_memory / 2**30
    try:
        import triton

        details["triton"] = triton.__version__
    except ImportError:
        details["triton"] = None
    if shutil.which("git"):
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
        details["git_commit"] = commit.stdout.strip() or None
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"]
        details["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
    return details


def section_gpu_tests(ctx: Context) -> dict:
    if ctx.device.type != "cuda":
        raise Skipped("no CUDA device: every GPU test would skip")
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        "-n",
        "0",
    ]  # in this process: its peak memory
    peak_file = ctx.output / "sections" / "gpu_tests_peak.json"
    peak_file.unlink(missing_ok=True)
    env = dict(os.environ, LPOSS_PEAK_MEMORY_FILE=str(peak_file))  # tests/conftest.py writes pytest's own peak
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env)
    print(run.stdout, run.stderr)
    lines = run.stdout.strip().splitlines()
    details = {"exit_code": run.returncode, "summary": lines[-1] if lines else ""}
    details["child_peak_gpu_memory_gb"] = json.loads(peak_file.read_text()) if peak_file.is_file() else None
    details["skip_reasons"] = [line for line in lines if line.startswith("SKIPPED")]
    if run.returncode == 5:
        raise Skipped("no test is marked gpu")
    if run.returncode != 0:
        raise CheckFailed(f"pytest -m gpu: {details['summary']}", details)
    return details


def section_metrics(ctx: Context) -> dict:
    from lposs.evaluation.metrics import boundary_iou_counts, iou_counts

    rng = np.random.default_rng(0)
    details: dict = {}
    sizes = [(64, 80, 21)] if ctx.tiny else [(375, 500, 21), (480, 640, 171), (1024, 2048, 19)]
    for h, w, c in sizes:
        coarse = rng.integers(0, c, size=(2, h // 16 + 1, w // 16 + 1))
        label, pred = (np.kron(m, np.ones((16, 16), np.int64))[:h, :w] for m in coarse)
        pred = np.where(rng.random((h, w)) < 0.3, label, pred)
        label[rng.random((h, w)) < 0.05] = 255
        on_device = [torch.from_numpy(m).to(ctx.device) for m in (pred, label)]
        iou_same = np.array_equal(iou_counts(*on_device, c).cpu().numpy(), iou_counts(pred, label, c))
        boundary_same = np.array_equal(
            boundary_iou_counts(*on_device, c).cpu().numpy(), boundary_iou_counts(pred, label, c)
        )
        details[f"{h}x{w} C={c}"] = {"iou_counts_equal": iou_same, "boundary_counts_equal": boundary_same}
    if not all(all(v.values()) for v in details.values()):
        raise CheckFailed("metric counts on the device differ from the CPU", details)
    return details


def section_patch_lp(ctx: Context) -> dict:
    from lposs.segmentation.label_propagation import propagate_patches

    n = (2 if ctx.tiny else 15) * 196
    g = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(n, 768, generator=g), dim=1)
    locations = torch.rand(n, 2, generator=g) * torch.tensor([448.0, 600.0])
    details: dict = {"patches": n}
    for c in (21,) if ctx.tiny else (21, 171):
        scores = torch.rand(n, c, generator=g) * 0.4
        cpu = propagate_patches(scores, features, locations)
        dev = propagate_patches(scores.to(ctx.device), features.to(ctx.device), locations.to(ctx.device))
        compare(details, f"C={c}", dev, cpu)
    return require_within(details, "patch LP")


def section_pixel_lp(ctx: Context) -> dict:
    from lposs.segmentation.kernels import pixel_backend_ran
    from lposs.segmentation.label_propagation import propagate_pixels

    h, w = (40, 56) if ctx.tiny else (448, 600)
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.avg_pool2d(torch.rand(1, 3, h, w, generator=g), 9, 1, 4)[0]
    has_backend = "backend" in inspect.signature(propagate_pixels).parameters
    backends = ["auto", "triton", "torch"] if has_backend else [None]
    details: dict = {"size": f"{h}x{w}"}
    for c in (3, 21) if ctx.tiny else (21, 171):
        scores = torch.rand(c, h, w, generator=g) * 0.4
        cpu = propagate_pixels(scores, image, **({"backend": "torch"} if has_backend else {}))
        for backend in backends:
            if backend == "triton" and ctx.device.type != "cuda":
                continue  # the Triton interpreter on CPU is the test suite's business (slow)
            extra = {"backend": backend} if backend else {}
            dev = propagate_pixels(scores.to(ctx.device), image.to(ctx.device), **extra)
            compare(details, f"C={c} backend={backend or 'default'}", dev, cpu)
            details[f"ran: C={c} backend={backend or 'default'}"] = pixel_backend_ran(ctx.device, backend or "auto")
    return require_within(details, "pixel LP")


def section_backbones(ctx: Context) -> dict:
    from lposs.datasets import class_names

    cpu, dev = backbone_pair(ctx)
    windows = smooth_windows(1 if ctx.tiny else 15)
    details: dict = {"windows": len(windows)}
    for model in (cpu, dev):
        model.set_classes(class_names("voc"))
    compare(details, "text_embeddings", dev.text_embeddings, cpu.text_embeddings)
    features_cpu, scores_cpu = cpu(windows)
    features_dev, scores_dev = dev(windows.to(ctx.device))
    compare(details, "dino_features", features_dev, features_cpu)
    compare(details, "clip_scores", scores_dev, scores_cpu)
    _compare_heads(details, cpu, dev, windows, ctx.device)
    return require_within(details, "backbones")


def _compare_heads(details: dict, cpu, dev, windows: torch.Tensor, device: torch.device) -> None:
    """The other CLIP heads and DINO feature kinds, device against CPU; the paper's pair is restored after."""
    try:
        for head, kind in (("sclip", "k"), ("clearclip", "q"), ("naclip", "v")):
            for model in (cpu, dev):
                model.clip_head, model.dino_kind = head, kind
            features_cpu, scores_cpu = cpu(windows)
            features_dev, scores_dev = dev(windows.to(device))
            compare(details, f"clip_scores_{head}", scores_dev, scores_cpu)
            compare(details, f"dino_features_{kind}", features_dev, features_cpu)
    finally:
        for model in (cpu, dev):
            model.clip_head, model.dino_kind = "maskclip", "v"


def _near_ties(scores: torch.Tensor, labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """Score margins ``scores[a] - scores[b]`` at the pixels where the two label maps differ."""
    differ = labels_a != labels_b
    picked = scores[:, differ]  # [K, D]
    return picked.gather(0, labels_a[differ][None]) - picked.gather(0, labels_b[differ][None])


def _agreement(scores_cpu: torch.Tensor, scores_dev: torch.Tensor) -> dict:
    """Scores' relative difference, the fraction of labels that differ, and the largest margin where they do."""
    labels_cpu, labels_dev = scores_cpu.argmax(0), scores_dev.argmax(0)
    margins = _near_ties(scores_cpu, labels_cpu, labels_dev)
    return {
        "scores": relative_difference(scores_dev, scores_cpu),
        "labels_differ_fraction": float((labels_cpu != labels_dev).float().mean()),
        "largest_margin_where_labels_differ": float(margins.max()) / float(scores_cpu.abs().max())
        if margins.numel()
        else 0.0,
    }


def knn_near_ties(features: torch.Tensor, k: int) -> int:
    """Patches whose k-th and (k+1)-th nearest neighbours are within ``KNN_TIE_GAP`` of similarity.

    Args:
        features: ``[B, D, gh, gw]`` L2-normalised patch features of one image's windows.
        k: the kNN graph's neighbours per patch.
    """
    b, d, gh, gw = features.shape
    flat = features.permute(0, 2, 3, 1).reshape(b * gh * gw, d)  # [N, D]
    if k >= flat.shape[0]:
        return 0  # every patch is a neighbour: nothing to reorder
    top = (flat @ flat.T).topk(k + 1, dim=1).values  # [N, k + 1], descending
    return int(((top[:, k - 1] - top[:, k]) < KNN_TIE_GAP).sum())


def section_end_to_end(ctx: Context) -> dict:
    """LPOSS+ on real images, the device against the CPU: in strict float32 (to ``TOLERANCE``) and in the users'
    mode (the default config; to ``USERS_MODE_TOLERANCE``). mIoU is reported in the users' mode."""
    from lposs.datasets import class_names
    from lposs.evaluation.device import PRECISION_MODES, apply_precision
    from lposs.evaluation.metrics import iou_counts, summarize
    from lposs.segmentation import Segmentor

    images = voc_mini_images(ctx)
    cpu, dev = backbone_pair(ctx)
    names = class_names("voc")
    details: dict = {
        "images": len(images),
        "precision": {"strict": PRECISION_MODES[True], "users": PRECISION_MODES[False]},
    }
    sums = {"cpu": np.zeros((4, 21)), "device": np.zeros((4, 21))}
    for model in (cpu, dev):
        model.set_classes(names)
    bad = {}
    for name, image, label in images:
        segmentor_cpu = Segmentor(cpu, settings(ctx))
        encoding = segmentor_cpu.encode(image)
        scores_cpu = segmentor_cpu.propagate(encoding)
        ties = knn_near_ties(encoding.features, settings(ctx).k)
        details[name] = {"knn_near_tie_rows": ties}
        for mode, tolerance in (("strict", TOLERANCE), ("users", USERS_MODE_TOLERANCE)):
            apply_precision(mode == "strict")
            scores_dev = Segmentor(dev, settings(ctx)).predict_scores(image).cpu()
            agreement = details[name][mode] = _agreement(scores_cpu, scores_dev)
            if ties:  # the graph itself is not determined by float32: compare the labels only
                if agreement["labels_differ_fraction"] > TIED_GRAPH_LABEL_FRACTION:
                    bad[f"{name} ({mode}, kNN near-ties, labels)"] = agreement
            # A label can flip where the margin is below twice the score difference: a near-tie.
            elif agreement["scores"] > tolerance or agreement["largest_margin_where_labels_differ"] > 2 * tolerance:
                bad[f"{name} ({mode}, tolerance {tolerance:.1e})"] = agreement
        sums["cpu"] += iou_counts(scores_cpu.argmax(0).numpy(), label, 21)
        sums["device"] += iou_counts(scores_dev.argmax(0).numpy(), label, 21)  # the users' mode, run last
    for key, value in sums.items():
        details[f"mIoU_{key}"] = summarize(value, None, names)["mIoU"]
    if bad:
        raise CheckFailed(f"CPU and {ctx.device} disagree beyond the tolerance (or away from ties): {bad}", details)
    return details


def section_determinism(ctx: Context) -> dict:
    from lposs.cli.benchmark_eval import smooth_image
    from lposs.datasets import class_names
    from lposs.segmentation import Segmentor

    try:
        image = voc_mini_images(ctx)[0][1]
    except Skipped:
        image = smooth_image(375, 500)
    _, backbones = backbone_pair(ctx)
    backbones.set_classes(class_names("voc"))
    with deterministic():
        first, second = (Segmentor(backbones, settings(ctx)).predict_scores(image) for _ in range(2))
    details = {"identical": bool(torch.equal(first, second)), "relative_difference": relative_difference(second, first)}
    details["precision"] = set_precision("determinism")  # the users' mode, as run_section_here set it
    if not details["identical"]:
        raise CheckFailed(f"two {ctx.device} runs differ (relative {details['relative_difference']:.1e})", details)
    return details


def _run_tool(command: list[str]) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, *command], cwd=REPO_ROOT, capture_output=True, text=True)
    print(run.stdout, run.stderr)
    if run.returncode != 0:
        tail = (run.stderr or run.stdout).strip().splitlines()[-3:]
        raise CheckFailed(f"{command[1]} exited with {run.returncode}: {' | '.join(tail)}", {"stdout": run.stdout})
    return run


def section_benchmark_lp(ctx: Context) -> dict:
    tiny = ["--classes", "3", "--windows", "2", "--size", "24", "30"] if ctx.tiny else []
    out = ctx.output / "benchmark_lp.json"
    run = _run_tool(["-m", "lposs.cli.benchmark_lp", "--device", str(ctx.device), "--json", str(out), *tiny])
    report = json.loads(out.read_text())
    rows = [{key: row[key] for key in ("level", "classes", "method", "backend", "seconds")} for row in report["rows"]]
    return {
        "table": run.stdout.strip().splitlines(),
        "rows": rows,
        "child_peak_gpu_memory_gb": report["peak_gpu_memory_gb"],
    }


def section_benchmark_eval(ctx: Context) -> dict:
    out = ctx.output / "benchmark_eval.json"
    tiny = ["--tiny", "--cases", "voc", "--warmup", "0"] if ctx.tiny else ["--repeats", "3"]
    run = _run_tool(["-m", "lposs.cli.benchmark_eval", "--device", str(ctx.device), "--json", str(out), *tiny])
    report = json.loads(out.read_text())
    results = {r["case"]: r for r in report["results"]}
    details: dict = {"table": run.stdout.strip().splitlines(), "results": list(results.values()), "targets": {}}
    details["child_peak_gpu_memory_gb"] = report.get("peak_gpu_memory_gb")
    details["precision"] = report.get("precision")
    targets = [("voc", "images_per_second", 20.0, ">="), ("coco_stuff", "images_per_second", 10.0, ">=")]
    targets += [(case, "peak_gpu_memory_gb", 10.0, "<") for case in ("cityscapes", "ade20k")]
    for case, key, bound, op in targets:
        value = results.get(case, {}).get(key)
        met = None if value is None else (value >= bound if op == ">=" else value < bound)
        details["targets"][f"{case} {key} {op} {bound:g}"] = {"value": value, "met": met}
    return details


SECTIONS: dict[str, tuple[Callable[[Context], dict], float]] = {
    "environment": (section_environment, 60),
    "gpu_tests": (section_gpu_tests, 150),
    "metrics": (section_metrics, 60),
    "patch_lp": (section_patch_lp, 60),
    "pixel_lp": (section_pixel_lp, 90),
    "backbones": (section_backbones, 90),
    "end_to_end": (section_end_to_end, 120),
    "determinism": (section_determinism, 60),
    "benchmark_lp": (section_benchmark_lp, 200),
    "benchmark_eval": (section_benchmark_eval, 240),
}
