"""The documentation stands alone: users clone the repository without the development notes beside it."""

import re
import subprocess
from pathlib import Path

from conftest import REPO_ROOT


def _user_facing_files() -> list[str]:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return [
        path
        for path in tracked.stdout.split()
        if not path.startswith("tests/") and path.endswith((".py", ".md", ".yaml", ".yml", ".txt", ".cff"))
    ]


def test_no_user_facing_file_points_outside_the_repository():
    offenders = []
    for path in _user_facing_files():
        text = (REPO_ROOT / path).read_text()
        for number, line in enumerate(text.splitlines(), 1):
            if re.search(r"\.\./shared|SPEC\b", line):
                offenders.append(f"{path}:{number}: {line.strip()}")
    assert not offenders, "user-facing text refers to files users do not have:\n" + "\n".join(offenders)


MAX_README_LINES = 250


def _doc_pages() -> list[Path]:
    return sorted((REPO_ROOT / "docs").glob("*.md"))


def _link_targets(markdown: str) -> list[str]:
    """The targets of the Markdown links and images of a page, outside code (``[text](target)``)."""
    prose = re.sub(r"```.*?```", "", markdown, flags=re.S)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    return re.findall(r"\]\(([^)\s]+)\)", prose)


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of a page: lower case, punctuation dropped, spaces to hyphens."""
    prose = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", prose, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, repeat = slug, 0
        while anchor in anchors:
            repeat += 1
            anchor = f"{slug}-{repeat}"
        anchors.add(anchor)
    return anchors


def _broken_links(page: Path) -> list[str]:
    """Relative links of ``page`` to a missing file or heading; a link resolves relative to the page holding it."""
    broken = []
    for target in _link_targets(page.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path) if path else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(target)
    return broken


def test_links_in_the_readme_and_the_docs_resolve():
    pages = [REPO_ROOT / "README.md", *_doc_pages()]
    offenders = [f"{page.relative_to(REPO_ROOT)} -> {target}" for page in pages for target in _broken_links(page)]
    assert not offenders, "links to missing files or headings:\n" + "\n".join(offenders)


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    (tmp_path / "docs" / "there.md").write_text("# There\n\n## The paper's `table` (VOC)\n")
    page.write_text(
        "## Here\n[ok](there.md#the-papers-table-voc) [up](../docs/there.md) [web](https://example.org) [in](#here)"
        " [bad](missing.md#x) [bad anchor](there.md#nowhere) [bad in-page](#nowhere)\n```\n[code](skipped.md)\n```"
    )
    assert _broken_links(page) == ["missing.md#x", "there.md#nowhere", "#nowhere"]


def _linked_from_readme() -> set[Path]:
    readme = REPO_ROOT / "README.md"
    return {(readme.parent / target.split("#", 1)[0]).resolve() for target in _link_targets(readme.read_text())}


def test_every_docs_page_is_linked_from_the_readme():
    assert _doc_pages(), "docs/ has no pages"
    linked = _linked_from_readme()
    unlinked = [str(page.relative_to(REPO_ROOT)) for page in _doc_pages() if page.resolve() not in linked]
    assert not unlinked, "docs pages the README does not link to: " + ", ".join(unlinked)


def test_readme_is_short():
    lines = len((REPO_ROOT / "README.md").read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move reference material to docs/"


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    command = re.search(r"## Tests\s+```bash\n(.+?)\n```", readme, re.S).group(1).strip()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert command.replace("python ", ".venv/bin/python ") in ci


def test_license_and_citation_are_there():
    assert (REPO_ROOT / "LICENSE").read_text().startswith("MIT License")
    citation = (REPO_ROOT / "CITATION.cff").read_text()
    assert "2503.19777" in citation and "Stojni" in citation


# A file path named in prose or code: a first-party folder, then path characters, ending in a file suffix or "/".
_POINTER = re.compile(
    r"(?<![\w./-])((?:lposs|tools|docs|tests|\.ci|segmentation|evaluation|models|datasets|configs|kernels)"
    r"/[\w./<>*-]*?(?:\.(?:py|md|yaml|cpp|txt|png)\b|/))"
)
_OTHER_PROJECT = re.compile(
    r"mmseg|mmcv|open_clip|timm|dinov2|facebookresearch|ProxyCLIP|SCLIP|ClearCLIP|NACLIP|LPOSS/"
)
# "see docs/x.md, section 'Heading'": a pointer into a page's heading.
_SECTION = re.compile(r"([\w/.-]+\.md), section '([^']+)'")


def _stale_pointers(path: Path, text: str) -> list[str]:
    """Paths and page sections that ``text`` (the file ``path``) names but that do not exist.

    A path resolves from the repository root, the package (``lposs/``) or the naming file's own folder; ``<key>``
    and ``*`` are wildcards. Paths under a folder the repository does not have (``data/``, ``out/``) are the
    user's, not pointers.
    """
    stale = []
    # A path right after another project's name is that project's ("mmsegmentation's tools/convert_datasets/").
    ours = {
        m.group(1)
        for m in _POINTER.finditer(text)
        if not _OTHER_PROJECT.search(text[max(0, m.start() - 60) : m.start()])
    }
    for pointer in sorted(ours):
        pattern = re.sub(r"<[^>]+>", "*", pointer).rstrip("/")
        bases = (REPO_ROOT, REPO_ROOT / "lposs", path.parent)
        if not any(list(base.glob(pattern)) if "*" in pattern else (base / pattern).exists() for base in bases):
            stale.append(pointer)
    for page, section in _SECTION.findall(text):
        target = REPO_ROOT / page
        slug = re.sub(r"[^\w\- ]", "", section.strip().lower()).replace(" ", "-")
        if not target.is_file() or slug not in _anchors(target):
            stale.append(f"{page}, section '{section}'")
    return stale


def test_no_stale_pointers_in_code_docs_or_requirements():
    """Every file path and 'page, section' pointer in the code, the docs and the install files exists."""
    files = [p for p in _user_facing_files() if p.endswith((".py", ".md", ".txt", ".yml", ".yaml"))]
    files += ["pyproject.toml", ".ci/run"]
    offenders = [
        f"{name}: {pointer}"
        for name in files
        for pointer in _stale_pointers(REPO_ROOT / name, (REPO_ROOT / name).read_text())
    ]
    assert not offenders, "pointers to files or sections that do not exist:\n" + "\n".join(offenders)


def test_a_stale_pointer_is_found():
    text = (
        "built on first use (segmentation/cpu_kernels.py); see README.md, section 'Preparing the datasets'; "
        "fine: lposs/segmentation/kernels/cpu.py, configs/datasets/<key>.py, tools/demo.py, "
        "docs/datasets.md, section 'Preparing the datasets'; as mmsegmentation's tools/convert_datasets/"
    )
    assert _stale_pointers(REPO_ROOT / "requirements.txt", text) == [
        "segmentation/cpu_kernels.py",
        "README.md, section 'Preparing the datasets'",
    ]


_SCRIPT = re.compile(r"(?:^|\s)(main_eval\.py|tools/(\w+)\.py|lposs-(eval|demo|app))(?=\s|$)")
_CONSOLE = {"eval": "main_eval", "demo": "demo", "app": "app"}


def _shown_commands() -> list[tuple[str, str, list[str]]]:
    """``(page, module, argv)`` of every ``main_eval.py`` / ``tools/*.py`` / ``lposs-*`` command of the README and
    the docs, in bash blocks or inline code (continuation lines joined, comments dropped, words after the script
    as argv)."""
    import shlex

    commands = []
    for page in [REPO_ROOT / "README.md", *_doc_pages()]:
        text = page.read_text()
        blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
        blocks += re.findall(r"`((?:python|torchrun|lposs-)[^`\n]*)`", re.sub(r"```.*?```", "", text, flags=re.S))
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #", 1)[0].strip()
                found = _SCRIPT.search(line)
                if not found or line.startswith("#"):
                    continue
                module = _CONSOLE[found.group(3)] if found.group(3) else (found.group(2) or "main_eval")
                words = shlex.split(line[found.end() :])
                words = [w for w in words if not w.startswith("$")]  # shell variables: set in the block itself
                placeholder = any(w in ("...", "…") or "<" in w for w in words)  # "main_eval.py ..." names a form
                if words and not placeholder:  # a bare name in prose ("`lposs-eval` (= `main_eval.py`)") neither
                    commands.append((page.name, module, words))
    return commands


def test_every_command_in_the_readme_and_docs_parses_as_written():
    """Each shown command names a script that exists, its flags parse, and for ``main_eval.py`` its config, overrides
    and sweep load and check (every key and value): the commands are a contract."""
    import importlib

    from lposs.evaluation.sweep import plan_combinations

    commands = _shown_commands()
    assert len(commands) >= 20 and {m for _, m, _ in commands} >= {"main_eval", "demo", "benchmark_lp", "gpu_check"}
    for page, module, argv in commands:
        assert module == "main_eval" or (REPO_ROOT / "tools" / f"{module}.py").is_file(), (page, module)
        cli = importlib.import_module(f"lposs.cli.{module}")
        try:
            args = cli.parse_args(argv)
        except SystemExit as exit_:
            raise AssertionError(f"{page}: {module} {' '.join(argv)} does not parse") from exit_
        if module == "main_eval":
            plan_combinations(args.config, args.overrides, args.sweep)  # ConfigError on a bad key or value
