"""The documentation stands alone: users clone the repository without the development notes beside it."""

import re
import subprocess

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


def test_readme_links_resolve():
    readme = (REPO_ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#][^)]*)\)", readme):
        if not target.startswith("http"):
            assert (REPO_ROOT / target).exists(), f"README links to missing {target}"


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    command = re.search(r"## Tests\s+```bash\n(.+?)\n```", readme, re.S).group(1).strip()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert command.replace("python ", ".venv/bin/python ") in ci


def test_license_and_citation_are_there():
    assert (REPO_ROOT / "LICENSE").read_text().startswith("MIT License")
    citation = (REPO_ROOT / "CITATION.cff").read_text()
    assert "2503.19777" in citation and "Stojni" in citation
