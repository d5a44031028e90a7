"""One run that proves the GPU path: GPU tests, CPU-vs-GPU agreement of every stage, determinism, benchmarks.

Sections: ``environment``; ``gpu_tests`` (``pytest -m gpu``); ``metrics``, ``patch_lp``, ``pixel_lp`` (every
pixel backend), ``backbones`` (CPU vs GPU on the same windows and weights); ``end_to_end`` (LPOSS+ on the real
VOC images of ``--data``/voc_mini: scores to 1e-4, labels equal except at near-ties; labels only where the kNN
graph has near-ties); ``determinism`` (two GPU
runs bit-identical); ``benchmark_lp`` and ``benchmark_eval`` (``tools/benchmark_*.py --device cuda``, the
figures and the peak GPU memory, also of the processes a section starts). Backbones are ViT-B/16 at random
initialisation (``--tiny``: ViT-S/16 and small images). Stage-wise comparisons run in strict float32 (no TF32);
end to end (in both modes), determinism and the benchmarks run in the users' mode, the config default
``strict_float32: false`` (torch's defaults: cuDNN convolutions may use TF32).

Each section runs in its own process with its own time limit and log (``DIR/logs/<section>.log``); a section
that fails, crashes or runs out of time is recorded as failed and the others still run. ``DIR/report.json``
and ``DIR/report.md`` are rewritten after every section. Under 8 minutes on one H100 (``--budget``).

Usage::

    python tools/gpu_check.py --output gpu_report                     # on a machine with one GPU
    python tools/gpu_check.py --output /tmp/smoke --device cpu --tiny # smoke test of the script itself
    python tools/gpu_check.py --output gpu_report --sections pixel_lp benchmark_lp
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from lposs.cli.gpu_check_sections import REPO_ROOT, SECTIONS, CheckFailed, Context, Skipped, set_precision


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="folder for report.md, report.json, logs/")
    parser.add_argument("--device", default="cuda", help="the device checked against the CPU (cpu: smoke test)")
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO_ROOT.parent / "shared" / "data",
        help="folder holding voc_mini/ (default: shared/data beside the repository)",
    )
    parser.add_argument("--tiny", action="store_true", help="ViT-S backbones and small sizes (quick)")
    parser.add_argument("--sections", nargs="+", default=None, help="only these sections, in this order")
    parser.add_argument("--budget", type=float, default=470.0, help="seconds for all sections together")
    parser.add_argument("--in-process", action="store_true", help="no subprocess per section (debugging, tests)")
    parser.add_argument("--run-section", default=None, help=argparse.SUPPRESS)  # the child of one section
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------- running


def indexed_device(name: str) -> torch.device:
    """``torch.device(name)``, with a bare ``cuda`` given the current device's index.

    ``torch.cuda.set_device`` refuses a device without an index (found on the first GPU run of this script).
    """
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def run_section_here(name: str, ctx: Context) -> dict:
    """Run one section in this process; never raises. Returns its record (status, message, details, seconds)."""
    function, _ = SECTIONS[name]
    start = time.perf_counter()
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)  # Triton launches on the current device
        torch.cuda.reset_peak_memory_stats(ctx.device)
    precision = set_precision(name)
    try:
        record = {"status": "passed", "message": "", "details": function(ctx)}
    except Skipped as reason:
        record = {"status": "skipped", "message": str(reason), "details": {}}
    except CheckFailed as failure:
        record = {"status": "failed", "message": str(failure), "details": failure.details}
    except Exception as error:  # any crash of the section is its own failure, not the script's
        traceback.print_exc()
        record = {"status": "failed", "message": f"{type(error).__name__}: {error}", "details": {}}
    record["precision"] = precision
    if ctx.device.type == "cuda":
        record["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
    record["seconds"] = time.perf_counter() - start
    return record


def section_command(name: str, args: argparse.Namespace) -> list[str]:
    """The command line of the child process that runs one section."""
    command = [sys.executable, "-m", "lposs.cli.gpu_check", "--output", str(args.output), "--run-section", name]
    command += ["--device", args.device, "--data", str(args.data)] + (["--tiny"] if args.tiny else [])
    return command


def run_section_isolated(name: str, args: argparse.Namespace, timeout: float) -> dict:
    """Run one section in a child process (own session, killed whole on timeout), its output to its log."""
    log = args.output / "logs" / f"{name}.log"
    result = args.output / "sections" / f"{name}.json"
    result.unlink(missing_ok=True)
    start = time.perf_counter()
    with open(log, "w") as log_file:
        child = subprocess.Popen(
            section_command(name, args),
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the section and whatever it started (pytest, benchmarks)
            child.wait()
            code = None
    seconds = time.perf_counter() - start
    if code is None:
        return {"status": "failed", "message": f"timed out after {timeout:.0f} s", "details": {}, "seconds": seconds}
    if not result.is_file():
        lines = log.read_text(errors="replace").strip().splitlines()[-3:]
        message = f"crashed (exit code {code}): {' | '.join(lines)}"
        return {"status": "failed", "message": message, "details": {}, "seconds": seconds}
    return json.loads(result.read_text())


def _cell(record: dict) -> str:
    message = record["message"].replace("|", "/").replace("\n", " ")
    return message if len(message) < 160 else message[:157] + "..."


def write_report(output: Path, header: dict, records: dict[str, dict]) -> None:
    """``report.json`` (everything) and ``report.md`` (a table, then each section's details)."""
    # A section's own process, and the processes it starts (pytest, the benchmarks), which report their peaks.
    peaks = [r.get("peak_gpu_memory_gb") for r in records.values()]
    peaks += [r["details"].get("child_peak_gpu_memory_gb") for r in records.values() if isinstance(r["details"], dict)]
    peaks = [peak for peak in peaks if peak is not None]
    report = {**header, "peak_gpu_memory_gb": max(peaks) if peaks else None, "sections": records}
    statuses = ("passed", "failed", "skipped", "running")
    report["counts"] = {s: sum(r["status"] == s for r in records.values()) for s in statuses}
    (output / "report.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [f"# GPU check: {header.get('device_name', header['device'])}", ""]
    lines += [f"- {key}: `{value}`" for key, value in header.items()]
    lines += [f"- counts: {report['counts']}", f"- peak GPU memory (GB): {report['peak_gpu_memory_gb']}", ""]
    lines += ["| section | status | seconds | message |", "|---|---|---|---|"]
    lines += [f"| {n} | {r['status']} | {r['seconds']:.1f} | {_cell(r)} |" for n, r in records.items()]
    for name, record in records.items():
        lines += ["", f"## {name}: {record['status']}", "", "```", json.dumps(record["details"], indent=2, default=str)]
        lines += ["```", f"log: logs/{name}.log"]
    (output / "report.md").write_text("\n".join(lines) + "\n")


def main(args: argparse.Namespace) -> int:
    unknown = [name for name in args.sections or [] if name not in SECTIONS]
    if unknown:
        print(f"error: unknown section(s) {unknown}; expected some of {list(SECTIONS)}", file=sys.stderr)
        return 2
    for folder in ("logs", "sections"):
        (args.output / folder).mkdir(parents=True, exist_ok=True)
    ctx = Context(indexed_device(args.device), args.tiny, args.data, args.output)
    if args.run_section:  # the child: run one section and leave its record for the parent
        record = run_section_here(args.run_section, ctx)
        path = args.output / "sections" / f"{args.run_section}.json"
        path.write_text(json.dumps(record, indent=2, default=str))
        return 0
    if ctx.device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device} but torch sees no CUDA device (use --device cpu)", file=sys.stderr)
        return 2
    header = {"device": args.device, "tiny": args.tiny, "data": str(args.data), "started": time.strftime("%F %T")}
    if ctx.device.type == "cuda":
        header["device_name"] = torch.cuda.get_device_name(ctx.device)
    records: dict[str, dict] = {}
    deadline = time.monotonic() + args.budget
    for name in args.sections or list(SECTIONS):
        remaining = deadline - time.monotonic()
        print(f"[gpu_check] {name} ...", flush=True)
        # Written first, so that a run killed from outside still shows which section it was in.
        records[name] = {"status": "running", "message": "started, not finished", "details": {}, "seconds": 0.0}
        write_report(args.output, header, records)
        if remaining < 5:
            records[name] = {"status": "skipped", "message": "time budget spent", "details": {}, "seconds": 0.0}
        elif args.in_process:
            records[name] = run_section_here(name, ctx)
        else:
            records[name] = run_section_isolated(name, args, min(SECTIONS[name][1], remaining))
        record = records[name]
        print(f"[gpu_check] {name}: {record['status']} ({record['seconds']:.1f} s) {record['message']}", flush=True)
        write_report(args.output, header, records)
    print(f"[gpu_check] report: {args.output / 'report.md'}")
    return 1 if any(r["status"] == "failed" for r in records.values()) else 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
