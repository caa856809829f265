"""Fixtures and collection rules; the shared helpers live in ``helpers.py``."""

import pathlib

import jax
import pytest
from helpers import make_params


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
