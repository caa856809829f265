"""The code is formatted and linted: ``ruff format --check .`` and ``ruff check .`` pass.

The rules (2-space indent, Google docstrings, bugbear, pyupgrade, isort) are in pyproject.toml.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
  "command",
  [["format", "--check", "--diff", "."], ["check", "--no-fix", "--output-format", "concise", "."]],
  ids=lambda c: c[0],
)
def test_ruff(command):
  result = subprocess.run(
    [sys.executable, "-m", "ruff", *command],
    capture_output=True,
    text=True,
    check=False,
    cwd=ROOT,
    timeout=300,
  )
  assert result.returncode == 0, f"ruff {' '.join(command)}:\n{result.stdout}{result.stderr}"[
    :20000
  ]
