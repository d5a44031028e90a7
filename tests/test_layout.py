"""The floors of the package: entry points (lposs.cli, lposs.api, the package face) -> lposs.evaluation ->
lposs.segmentation -> lposs.models, lposs.datasets (and lposs.outputs under lposs.evaluation) -> lposs.files; no import circle;
one top-level package; thin scripts."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO_ROOT

# A floor may import only from the floors below it (and from itself). "scripts" are main_eval.py and tools/*.py.
# "files" (durable atomic writes, link-safe listing; standard library only) is the lowest floor: models, datasets
# and outputs write files too, and the package has one way to write a file (tests/test_files.py).
ENTRY = {"evaluation", "segmentation", "models", "datasets", "outputs", "files"}
FLOORS = {
    "scripts": {"cli"},
    "lposs": ENTRY | {"api"},  # the package face re-exports the API and the engine
    "cli": ENTRY | {"api"},
    "api": ENTRY,  # a library call never goes through the command-line programs
    "evaluation": {"segmentation", "models", "datasets", "outputs", "files"},
    "segmentation": {"models", "datasets", "files"},
    "models": {"files"},
    "datasets": {"files"},
    "outputs": {"files"},  # output folders: standard library only, and the files floor
    "files": set(),
}
PACKAGES = ("cli", "evaluation", "segmentation", "models", "datasets", "outputs", "files")


def floor_of(module: str) -> str:
    """``lposs.evaluation.loop`` -> ``evaluation``; ``lposs`` -> ``lposs``; ``main_eval``, ``tools.demo`` -> ``scripts``."""
    parts = module.split(".")
    if parts[0] != "lposs":
        return "scripts"
    return parts[1] if len(parts) > 1 else "lposs"


def _module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every first-party module outside tests."""
    files = {"main_eval": REPO_ROOT / "main_eval.py"}
    files.update({f"tools.{path.stem}": path for path in sorted((REPO_ROOT / "tools").glob("*.py"))})
    for path in sorted((REPO_ROOT / "lposs").rglob("*.py")):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        if "configs" in parts:  # mmseg config files (data), not modules
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _imports(module: str, path: Path) -> set[str]:
    """First-party modules that ``module`` imports, at any depth of its code (lazy imports included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "lposs"}


def _graph() -> dict[str, set[str]]:
    files = _module_files()
    return {
        module: {name for name in _imports(module, path) if name in files} - {module} for module, path in files.items()
    }


def test_imports_only_go_down():
    offenders = []
    for module, imported in _graph().items():
        floor = floor_of(module)
        allowed = FLOORS[floor] | {floor}
        offenders += [
            f"{module} imports {name}" for name in imported if floor_of(name) not in allowed and name != "lposs"
        ]
    assert not offenders, "imports that go up or sideways:\n" + "\n".join(sorted(offenders))


def test_nothing_outside_the_command_line_programs_imports_them():
    """``lposs.cli`` is the top floor: the API, the package face and every floor below import none of it."""
    offenders = [
        f"{module} imports {name}"
        for module, imported in _graph().items()
        if module.startswith("lposs") and floor_of(module) != "cli"
        for name in imported
        if floor_of(name) == "cli"
    ]
    assert not offenders, "imports of lposs.cli:\n" + "\n".join(sorted(offenders))
    assert "lposs.evaluation.device" in _graph()["lposs.api"]  # the check sees the API's imports


def test_no_import_circle():
    graph = _graph()
    # A package's __init__ importing its own modules is the package's face, not a circle through it.
    edges = {
        m: {n for n in targets if not (n == m.rpartition(".")[0] and m.startswith(n + "."))}
        for m, targets in graph.items()
    }
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_layout_checks_can_fail():
    """The checkers see an upward import and a circle when there is one (guards against a vacuous pass)."""
    assert "lposs.evaluation.loop" in _graph()["lposs.evaluation.runner"]
    assert "lposs.segmentation.label_propagation" in _graph()["lposs.segmentation.segmentor"]
    assert "evaluation" not in FLOORS["segmentation"]
    assert floor_of("lposs.segmentation.kernels.cpu") == "segmentation" and floor_of("tools.demo") == "scripts"


def test_no_package_holds_more_than_35_percent_of_the_code():
    def lines(path: Path) -> int:
        return sum(1 for line in path.read_text().splitlines() if line.strip())

    files = [path for module, path in _module_files().items() if module.startswith("lposs.")]
    total = sum(lines(p) for p in files)
    for top in PACKAGES:
        share = sum(lines(p) for p in files if p.relative_to(REPO_ROOT / "lposs").parts[0] == top) / total
        assert share <= 0.35, f"lposs/{top}/ holds {share:.0%} of the package's Python lines"


def test_one_top_level_package():
    """Nothing at the top shadows a common name (``datasets``, ``models``...): the code is in ``lposs/`` alone."""
    packages = sorted(p.name for p in REPO_ROOT.iterdir() if (p / "__init__.py").is_file())
    assert packages == ["lposs"]
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert 'include = ["lposs*"]' in pyproject


def test_scripts_are_thin_wrappers():
    """``main_eval.py`` and ``tools/<name>.py`` hold no logic: each imports its own ``lposs.cli.<name>`` only."""
    for module, path in _module_files().items():
        if floor_of(module) != "scripts":
            continue
        name = module.rpartition(".")[2]
        code = [line for line in path.read_text().splitlines() if line.strip()]
        assert len(code) <= 12, f"{path.name} has {len(code)} lines: a wrapper should be thin"
        assert _imports(module, path) <= {
            f"lposs.cli.{name}",
            *(f"lposs.cli.{name}.{n}" for n in ("cli", "main", "parse_args")),
        }


def test_no_sys_path_edits():
    """Imports work through the installed package (``pip install -e .``), never by editing ``sys.path``."""
    pattern = re.compile(r"sys\.path\.(insert|append)|sys\.path\s*\+?=")
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for path in [
            *(REPO_ROOT / "lposs").rglob("*.py"),
            *(REPO_ROOT / "tools").glob("*.py"),
            *(REPO_ROOT / "tests").glob("*.py"),
            REPO_ROOT / "main_eval.py",
        ]
        if path.name != "test_layout.py" and pattern.search(path.read_text())
    ]
    assert not offenders, f"sys.path edited in {offenders}"


def test_every_module_of_the_package_imports():
    """A module importing a name that moved away (a merge, a rename) fails here, not only in the path that uses it."""
    import importlib
    import pkgutil

    import lposs

    names = [info.name for info in pkgutil.walk_packages(lposs.__path__, "lposs.")]
    assert len(names) > 60
    for name in names:
        importlib.import_module(name)
