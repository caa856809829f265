"""The documentation site builds without a warning: broken references, links or docstrings fail.

``mkdocs build --strict`` renders every guide page and the API reference from the docstrings
(mkdocstrings), so a renamed function, a cross-reference to nothing or a link to a missing page
fails the suite.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_site_builds_strictly(tmp_path):
  result = subprocess.run(
    [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
    capture_output=True,
    text=True,
    check=False,
    cwd=ROOT,
    timeout=600,
    env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
  )
  assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
  assert (tmp_path / "site" / "api" / "ivon_optax" / "index.html").is_file()


def test_every_public_module_has_an_api_page():
  public = {"ivon_optax"} | {
    f"ivon_optax.{path.stem}"
    for path in (ROOT / "ivon_optax").glob("*.py")
    if not path.name.startswith("_")
  }
  documented = {
    match
    for page in (ROOT / "docs" / "api").glob("*.md")
    for match in re.findall(r"^:::\s+(\S+)", page.read_text(), flags=re.MULTILINE)
  }
  assert documented == public
