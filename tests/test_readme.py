"""The README's two set-up commands are the ones CI and users run."""

import re

from tests.conftest import REPO


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text())[:2]


def test_readme_opens_with_run_and_test_commands():
    run, test = readme_commands()
    assert run.startswith("pip install") and run.endswith("python -m qco")
    assert test.startswith("pip install") and test.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    _, test = readme_commands()
    assert test in (REPO / ".ci" / "run").read_text().splitlines()


def test_nothing_points_at_a_document_outside_the_repository():
    """The repository stands alone: a fact qco relies on is carried into benchmarks/README.md and cited
    there, never cited from notes that are not part of it."""
    files = [REPO / "README.md", *REPO.glob("benchmarks/*.md"), *REPO.glob("benchmarks/*.py"),
             *REPO.glob("benchmarks/*.sh"), *REPO.glob("qco/**/*.py"), *REPO.glob("conf/**/*.yaml"),
             *(p for p in REPO.glob("tests/*.py") if p.name != "test_readme.py")]
    for path in files:
        text = path.read_text()
        for outside in ("findings.md", "shared/docs", "../shared", "style.md", "architecture.md", "seed.md"):
            assert outside not in text, f"{path.relative_to(REPO)} cites {outside}"
