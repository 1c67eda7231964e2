"""Referring-expression chance levels, worked by hand."""

import pytest
import torch

from vlp.metrics.refexp import centre_box_chance, random_candidate_chance


def test_random_candidate_chance_counts_only_kept_candidates():
    target = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]])
    candidates = torch.tensor(
        [
            # IoU with the target 1, 0.5 (half of it: a hit), 0; the padded fourth would be a hit if counted
            [[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.25], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]],
            [[0.0, 0.0, 1.0, 1.0]] * 4,  # an image without kept candidates scores 0
        ]
    )
    keep = torch.tensor([[True, True, True, False], [False] * 4])
    hit, iou = random_candidate_chance(candidates, keep, target)
    assert hit.tolist() == pytest.approx([2 / 3, 0.0])
    assert iou.tolist() == pytest.approx([1.5 / 3, 0.0])


def test_random_candidate_chance_names_the_shapes_it_expected():
    with pytest.raises(ValueError, match=r"keep \(1, 2\).*expected \(B, R, 4\), \(B, R\) and \(B, 4\)"):
        random_candidate_chance(torch.zeros(1, 3, 4), torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 4))


def test_centre_box_chance_of_one_centred_target_is_a_full_hit():
    # the mean target size is the target's own, so the centre box is the target itself
    out = centre_box_chance(torch.tensor([[0.25, 0.25, 0.75, 0.75]]))
    assert out == pytest.approx({"accuracy": 100.0, "miou": 100.0})
