"""Box conversions, IoU, GIoU and accuracy@IoU on hand-worked boxes."""

import pytest
import torch

from vlp.metrics import (
    accuracy_at_iou,
    box_convert,
    box_iou,
    elementwise_box_iou,
    elementwise_generalized_box_iou,
    generalized_box_iou,
    giou_loss,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
)

A = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
B = torch.tensor([[1.0, 1.0, 3.0, 3.0]])  # overlaps A in a 1x1 square
C = torch.tensor([[2.0, 2.0, 3.0, 3.0]])  # touches A at a corner only


def test_conversions_by_hand():
    assert xywh_to_xyxy(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [1.0, 2.0, 4.0, 6.0]
    assert xyxy_to_cxcywh(torch.tensor([1.0, 2.0, 3.0, 6.0])).tolist() == [2.0, 4.0, 2.0, 4.0]
    assert box_convert(torch.tensor([2.0, 3.0, 2.0, 2.0]), "cxcywh", "xywh").tolist() == [1.0, 2.0, 2.0, 2.0]


def test_conversions_round_trip():
    boxes = torch.rand(5, 3, 4) * 10
    for fmt in ("xywh", "cxcywh"):
        assert torch.allclose(box_convert(box_convert(boxes, "xyxy", fmt), fmt, "xyxy"), boxes, atol=1e-5)
    with pytest.raises(ValueError, match="unknown box format 'xxyy'"):
        box_convert(boxes, "xyxy", "xxyy")


def test_iou_by_hand():
    # intersection 1, union 4 + 4 - 1 = 7
    assert box_iou(A, B).item() == pytest.approx(1 / 7)
    assert box_iou(A, C).item() == 0.0
    assert box_iou(A, A).item() == pytest.approx(1.0)
    pair = box_iou(torch.cat([A, B]), torch.cat([A, B, C]))
    assert pair.shape == (2, 3)
    assert pair[1].tolist() == pytest.approx([1 / 7, 1.0, 1 / 4])  # B vs C: inter 1, union 4


def test_giou_by_hand():
    # A, B: hull [0,0,3,3] area 9, union 7 -> 1/7 - 2/9
    assert generalized_box_iou(A, B).item() == pytest.approx(1 / 7 - 2 / 9)
    # A, C: hull area 9, union 5, IoU 0 -> -4/9
    assert generalized_box_iou(A, C).item() == pytest.approx(-4 / 9)
    far = torch.tensor([[100.0, 100.0, 101.0, 101.0]])
    assert -1 < generalized_box_iou(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), far).item() < -0.99


def test_elementwise_matches_pairwise_diagonal():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(6, 2, generator=gen) * 5
    boxes1 = torch.cat([xy, xy + torch.rand(6, 2, generator=gen) * 3 + 0.1], 1)
    xy = torch.rand(6, 2, generator=gen) * 5
    boxes2 = torch.cat([xy, xy + torch.rand(6, 2, generator=gen) * 3 + 0.1], 1)
    assert torch.allclose(elementwise_box_iou(boxes1, boxes2), box_iou(boxes1, boxes2).diagonal())
    assert torch.allclose(
        elementwise_generalized_box_iou(boxes1, boxes2), generalized_box_iou(boxes1, boxes2).diagonal()
    )


def test_giou_loss_values_and_gradient():
    pred = torch.cat([A, A]).requires_grad_(True)
    target = torch.cat([B, A])
    loss = giou_loss(pred, target, reduction="none")
    assert loss.tolist() == pytest.approx([1 - (1 / 7 - 2 / 9), 0.0])
    giou_loss(pred, target).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[0].abs().sum() > 0
    with pytest.raises(ValueError, match="inverted boxes"):
        giou_loss(torch.tensor([[2.0, 2.0, 0.0, 0.0]]), A)


def test_accuracy_at_iou():
    pred = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    gt = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
    # IoUs: exactly 0.5 (counts), 1.0, 1/7
    assert accuracy_at_iou(pred, gt) == pytest.approx(2 / 3)
    assert accuracy_at_iou(pred, gt, threshold=0.9) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="same shape"):
        accuracy_at_iou(pred, gt[:2])


def test_accuracy_at_iou_of_exactly_one_half_in_large_pixel_boxes():
    # half of the target's width, same height: inter = 3658 * 5761 = 21,073,738 and
    # union = 7316 * 5761 = 42,147,476, so IoU = 0.5 exactly; float32 areas above 2**24 round to 0.49999994
    pred = torch.tensor([[2094.0, 1990.0, 5752.0, 7751.0]])
    target = torch.tensor([[2094.0, 1990.0, 9410.0, 7751.0]])
    assert accuracy_at_iou(pred, target) == 1.0


def test_empty_boxes_do_not_give_nan():
    empty = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert box_iou(empty, empty).item() == 0.0
    assert torch.isfinite(generalized_box_iou(empty, empty)).all()
