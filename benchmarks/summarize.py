"""Combines repeated ``step_time.py --json`` runs into one table of medians and their spread.

For each (model, backend, optimizer) it prints the median over runs of the median step time and
of the ratio to AdamW, with the [min, max] over runs, so that a shared or noisy machine shows
how far the numbers move between repetitions.

Example::

  python benchmarks/summarize.py run1.json run2.json run3.json
"""

import argparse
import collections
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import measure


def combine(reports: list[dict]) -> list[dict]:
  """One row per (model, backend, optimizer): per-run medians and ratios, in run order."""
  rows = collections.OrderedDict()
  for report in reports:
    for result in report["results"]:
      key = (result["model"], result["backend"], result["optimizer"])
      row = rows.setdefault(
        key,
        {
          "model": key[0],
          "backend": key[1],
          "optimizer": key[2],
          "median_ms": [],
          "ratio_to_adamw": [],
        },
      )
      row["median_ms"].append(result["step_ms"]["median"])
      if result["ratio_to_adamw"] is not None:
        row["ratio_to_adamw"].append(result["ratio_to_adamw"])
  return list(rows.values())


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("runs", nargs="+", type=Path, help="JSON files from step_time.py --json")
  args = parser.parse_args(argv)
  reports = [json.loads(path.read_text()) for path in args.runs]
  table = [
    [
      row["model"],
      row["backend"],
      row["optimizer"],
      len(row["median_ms"]),
      measure.spread(row["median_ms"]),
      measure.spread(row["ratio_to_adamw"]) if row["ratio_to_adamw"] else "n/a",
    ]
    for row in combine(reports)
  ]
  text = measure.markdown_table(
    [
      "model",
      "backend",
      "optimizer",
      "runs",
      "median ms: median over runs [min, max]",
      "/ AdamW [min, max]",
    ],
    table,
  )
  print(text)
  return text


if __name__ == "__main__":
  main()
