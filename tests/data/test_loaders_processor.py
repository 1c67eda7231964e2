"""The per-sample pipeline: draft decoding keeps boxes right, crops drop lost boxes, flips re-score VQA answers."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from vlp.data.config import TransformConfig
from vlp.data.dataset import ProcessorConfig, SampleProcessor

PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def _red_extent(image: torch.Tensor) -> torch.Tensor:
    red = (image[0] > 0.6) & (image[1] < 0.4) & (image[2] < 0.4)
    ys, xs = torch.nonzero(red, as_tuple=True)
    h, w = image.shape[1:]
    return torch.tensor([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h])


def test_draft_decoded_jpeg_keeps_boxes_on_their_pixels(tmp_path) -> None:
    image = Image.new("RGB", (640, 480), (20, 60, 20))
    image.paste((230, 20, 20), (320, 96, 480, 288))
    image.save(tmp_path / "photo.jpg", "JPEG", quality=95)
    record = {"image": str(tmp_path / "photo.jpg"), "image_id": 1, "boxes": [[320, 96, 480, 288]], "labels": [0]}
    processor = SampleProcessor(ProcessorConfig(image_size=64, transform=TransformConfig(**PLAIN)))
    assert processor.transform.draft_size == (64, 64)  # libjpeg decodes this 640x480 file at 1/4 scale
    sample = processor(record, random.Random(0))
    assert sample["image"].shape == (3, 64, 64)
    torch.testing.assert_close(sample["region_boxes"], torch.tensor([[0.5, 0.2, 0.75, 0.6]]))
    torch.testing.assert_close(_red_extent(sample["image"]), sample["region_boxes"][0], atol=2 / 64, rtol=0)


def test_boxes_cropped_away_are_dropped_and_recorded(tmp_path) -> None:
    Image.new("RGB", (80, 20), (0, 0, 0)).save(tmp_path / "wide.png")
    record = {"image": str(tmp_path / "wide.png"), "boxes": [[0, 0, 5, 20], [35, 5, 45, 15]], "labels": [3, 4]}
    config = ProcessorConfig(image_size=20, train=True, transform=TransformConfig(train_crop="center", **PLAIN))
    sample = SampleProcessor(config)(record, random.Random(0))
    # the centre crop keeps x in [30, 50): the first box is gone, the second maps to [0.25, 0.25, 0.75, 0.75]
    torch.testing.assert_close(sample["region_boxes"], torch.tensor([[0.25, 0.25, 0.75, 0.75]]))
    assert sample["meta"]["box_keep"] == [False, True] and sample["meta"]["labels"] == [3, 4]


def test_flip_swaps_question_words_and_rescores_answers(tmp_path) -> None:
    Image.new("RGB", (16, 16), (9, 9, 9)).save(tmp_path / "q.png")
    vocab = ["left", "right", "yes"]
    record = {"image": str(tmp_path / "q.png"), "question": "which side is the red circle on, left or right?",
              "answers": ["left"] * 9 + ["right"], "targets": {0: 1.0, 1: 0.3}}  # fmt: skip
    config = ProcessorConfig(image_size=8, train=True, answer_vocab=vocab,
                             transform=TransformConfig(train_crop="resize", hflip=1.0, **PLAIN))  # fmt: skip
    sample = SampleProcessor(config)(record, random.Random(0))
    assert sample["text"] == "which side is the red circle on, right or left?"
    # "left" now has 1 of 10 annotators: 9 leave-one-out subsets score 1/3, one scores 0 -> 0.3
    assert sample["answer_targets"] == {1: 1.0, 0: pytest.approx(0.3)} and sample["meta"]["flipped"]
    unflipped = ProcessorConfig(image_size=8, train=True, answer_vocab=vocab, transform=TransformConfig(**PLAIN))
    assert SampleProcessor(unflipped)(record, random.Random(0))["answer_targets"] == {0: 1.0, 1: 0.3}
