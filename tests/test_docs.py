"""The documentation builds (MkDocs, strict: no broken link or anchor), and the README points at
pages that exist and gives the test command CI runs."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT


def test_the_reference_builds_strictly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()


def test_the_readme_is_an_overview_with_working_links():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 150
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).is_file(), target
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^pip install .*python -m pytest -q$", ci, re.M)
    assert command is not None and command.group(0) in readme
