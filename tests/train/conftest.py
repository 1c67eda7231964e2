"""Shared set-up of the training-engine tests."""

from __future__ import annotations

import os
import sys

import pytest

# the toy job (toy_train.py) and the worker script live next to the tests
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every test here runs on one intra-op thread (the ``one_thread`` fixture of tests/conftest.py)."""
