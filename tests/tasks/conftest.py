import pytest


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every test here runs on one intra-op thread (the ``one_thread`` fixture of tests/conftest.py)."""
