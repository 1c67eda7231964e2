"""Shared set-up of the training-engine tests."""

from __future__ import annotations

import os
import sys

# the toy job (toy_train.py) and the worker script live next to the tests
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
