"""Shared set-up of the training-engine tests."""

from __future__ import annotations

import os
import sys

import pytest
import torch

# the toy job (toy_train.py) and the worker script live next to the tests
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the same kernels (hence bits) as the worker processes, and
    no oversubscription of the shared CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
