"""ITC over 2 gloo ranks x B equals 1 process x 2B: loss and DDP-averaged gradients."""

from pathlib import Path

import dist_itc_worker as worker
import pytest
from two_ranks import check_loss_and_gradients


@pytest.mark.slow
def test_itc_two_ranks_match_one_process(tmp_path: Path) -> None:
    check_loss_and_gradients(worker, tmp_path)
