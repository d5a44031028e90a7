"""Test configuration: the location of ../shared, strict CPU kernels, shared fixtures."""

import os
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"

# Under pytest-xdist each worker takes its share of the cores: torch's threads of two workers on two cores
# would otherwise contend, which slows torch down far more than it gains. The processes a test starts (command-line
# children, the Triton interpreter's run) take the same share: OpenMP threads that wait for a core spin on it.
# (Only workers have the variable: xdist's controller, which runs no test, imports neither torch nor open_clip.)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    import torch

    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(_threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))


@pytest.fixture(autouse=True, scope="session")
def _test_process_setup():
    """In each process that runs tests (and so in the forks of its tests), before the tests' own fixtures:

    - the tiny CLIP configs of tests/tiny_models.py become open_clip model names;
    - where a C++ compiler exists, CPU kernels that fail to build fail the tests (subprocesses included) instead
      of falling back to the torch paths with a warning, as they do for users.
    """
    from tiny_models import add_tiny_clip_configs

    from lposs.segmentation.kernels.cpu import compiler_available

    add_tiny_clip_configs()
    if compiler_available():
        os.environ.setdefault("LPOSS_CPU_KERNEL", "require")


@pytest.fixture(autouse=True, scope="session")
def _text_cache_in_tmp(tmp_path_factory):
    """The text-embedding cache of the whole session (subprocesses included) in a temporary folder, shared by the
    xdist workers of one run (entries are written atomically): a class list is encoded once per run."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    cache = root / "lposs_cache"
    cache.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LPOSS_CACHE_DIR", str(cache))
        yield


def pytest_sessionfinish(session, exitstatus):
    """With ``LPOSS_PEAK_MEMORY_FILE`` set (tools/gpu_check.py's gpu_tests section), write the session's peak GPU
    memory in GB there: the GPU work happens in this process, which the section only starts."""
    path = os.environ.get("LPOSS_PEAK_MEMORY_FILE")
    if not path:
        return
    import torch

    peak = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peak = max(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / 2**30
    Path(path).write_text("null" if peak is None else repr(peak))


@pytest.fixture
def windows_seen(monkeypatch):
    """Number of windows that went through the backbones (LPOSSBackbones.forward)."""
    from lposs.models import LPOSSBackbones

    seen = [0]
    original = LPOSSBackbones.forward

    def counting(self, windows):
        seen[0] += windows.shape[0]
        return original(self, windows)

    monkeypatch.setattr(LPOSSBackbones, "forward", counting)
    return seen


@pytest.fixture
def builds(monkeypatch):
    """How many patch graphs (patch_affinity) and pixel graphs (pixel_affinity) label propagation built."""
    import lposs.segmentation.label_propagation as lp

    counts = {"patch": 0, "pixel": 0}

    def counting(name, original):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(lp, "patch_affinity", counting("patch", lp.patch_affinity))
    monkeypatch.setattr(lp, "pixel_affinity", counting("pixel", lp.pixel_affinity))
    return counts


@pytest.hookimpl(tryfirst=True)  # before -m "not slow" deselects by marks
def pytest_collection_modifyitems(config, items):
    """Every test that starts processes (subprocess, forks, torchrun; tests/process_starts.py reads the test code)
    is marked ``slow``: ``-m "not slow"`` leaves out the multi-process runs, new tests included."""
    from process_starts import starts_processes

    for item in items:
        module = getattr(item, "module", None)
        if module is not None and starts_processes(module.__name__.rpartition(".")[2], item.originalname):
            item.add_marker(pytest.mark.slow)
