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
