import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the toy model helper module next to this file

from objectives_toy_model import ToyModel, toy_batch  # noqa: E402


@pytest.fixture
def toy_model() -> ToyModel:
    torch.manual_seed(0)
    return ToyModel()


@pytest.fixture
def batch():
    return toy_batch()
