"""Fixtures and collection rules; the shared helpers live in ``helpers.py``."""

import os
import pathlib

import jax
import pytest
from helpers import make_params

_UNOPTIMIZED = "--xla_backend_optimization_level=0"


def pytest_configure(config):
  """The fast suite compiles without LLVM's optimizations.

  Compiling is most of the fast suite's time on a CPU, and its programs are small.
  LLVM's optimizations make compiled code faster and change its results only by
  round-off (XLA uses no fast-math), so they are skipped, except for the study tier's
  long runs.
  JAX reads ``XLA_FLAGS`` when it creates its backend, after this hook.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if config.option.markexpr.strip() != "study" and _UNOPTIMIZED not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {_UNOPTIMIZED}".strip()


@pytest.fixture
def params():
  return make_params()


def pytest_ignore_collect(collection_path: pathlib.Path, config):
  """Collect ``eight_devices.py`` only in the 8-device process that runs it.

  ``test_sharding.py`` runs it in a subprocess with 8 simulated devices; the
  rest of the suite keeps one device and would otherwise import it (for
  doctests) only to skip it.
  """
  if collection_path.name == "eight_devices.py" and jax.device_count() != 8:
    return True
  return None
