"""README's quickstart runs as written, learns a posterior, and its Bayesian average pays off."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _quickstart_blocks() -> list[str]:
  text = README.read_text()
  section = text[text.index("## Quickstart") :]
  section = section[: section.index("\n## ", 1)]
  return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_quickstart_learns_h_and_its_bayesian_average_beats_its_mean():
  blocks = _quickstart_blocks()
  assert len(blocks) == 2
  namespace: dict = {}
  for block in blocks:
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
  logs = namespace["logs"]
  assert bool(logs["learned"]), {name: float(value) for name, value in logs.items()}
  assert float(logs["hess_data_share"]) > 0.2
  assert float(namespace["nll_bayes"]) < float(namespace["nll_mean"]) - 0.02
  assert np.isfinite(float(namespace["loss"]))
