"""collate: padded text, variable numbers of regions and boxes, masks, targets."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from loaders_helpers import tiny_tokenizer

from vlp.data.collate import LoaderCollate, collate
from vlp.data.skipping import Skipped


@dataclass
class _Tokens:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    word_ids: torch.Tensor


class _WhitespaceTokenizer:
    """Any object with the tokenizer call signature works: one id per word, 1 = [CLS], 2 = [SEP], 0 = pad."""

    def __call__(self, texts: list[str], max_length: int, padding: str = "longest") -> _Tokens:
        rows = [[1] + [len(w) + 10 for w in t.split()][: max_length - 2] + [2] for t in texts]
        length = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        words = torch.full_like(ids, -1)
        return _Tokens(ids, ids != 0, torch.zeros_like(ids), words)


def _sample(i: int, regions: int, text: str = "a photo", **extra) -> dict:
    sample = {"image": torch.full((3, 4, 4), float(i)), "text": text, "meta": {"image_id": i}, "image_index": i}
    if regions:
        sample["region_features"] = torch.arange(regions * 2, dtype=torch.float32).view(regions, 2) + 100 * i
        sample["region_boxes"] = torch.full((regions, 4), 0.1 * (i + 1))
        sample["region_class_probs"] = torch.full((regions, 3), 1 / 3)
    return sample | extra


def test_text_and_images_match_the_tokenizer() -> None:
    tok = tiny_tokenizer()
    texts = ["a photo of a red circle", "the dog", "caption 7 left of caption 8 above"]
    batch = collate([_sample(i, 0, t) for i, t in enumerate(texts)], tok, max_text_len=6)
    direct = tok(texts, max_length=6, padding="longest")
    assert torch.equal(batch.input_ids, direct.input_ids) and batch.input_ids.shape[1] <= 6
    assert batch.attention_mask.dtype == torch.bool and torch.equal(batch.attention_mask, direct.attention_mask)
    assert torch.equal(batch.word_ids, direct.word_ids) and torch.equal(batch.token_type_ids, direct.token_type_ids)
    assert batch.images.shape == (3, 3, 4, 4) and batch.images[2].unique().tolist() == [2.0]
    assert batch.image_index.tolist() == [0, 1, 2] and [m["text"] for m in batch.meta] == texts
    plain = collate([_sample(0, 0, "one two three")], _WhitespaceTokenizer(), max_text_len=4)
    assert plain.input_ids.tolist() == [[1, 13, 13, 2]]  # truncated to 4 with [SEP] kept
    assert collate([_sample(0, 0)], None).input_ids is None


def test_regions_are_padded_with_masks() -> None:
    batch = collate([_sample(0, 2), _sample(1, 0), _sample(2, 3)])
    assert batch.region_features.shape == (3, 3, 2) and batch.region_boxes.shape == (3, 3, 4)
    assert batch.region_mask.tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert batch.region_features[2, 2].tolist() == [204.0, 205.0] and batch.region_features[0, 2].abs().sum() == 0
    assert batch.region_boxes[0, 1].tolist() == pytest.approx([0.1] * 4) and batch.region_boxes[1].abs().sum() == 0
    assert batch.region_class_probs.shape == (3, 3, 3) and batch.region_class_probs[1].sum() == 0
    bad = _sample(1, 1)
    bad["region_features"] = torch.zeros(1, 5)
    with pytest.raises(ValueError, match="region feature sizes differ"):
        collate([_sample(0, 1), bad])


def test_tags_targets_and_boxes() -> None:
    tok = tiny_tokenizer()
    samples = [
        _sample(0, 0, tags=["dog", "cat"], answer_targets={2: 1.0, 0: 0.3}, target_box=torch.tensor([0, 0, 0.5, 0.5])),
        _sample(1, 0, tags=[], answer_targets={}, target_box=torch.tensor([0.5, 0.5, 1, 1])),
    ]
    batch = collate(samples, tok, max_text_len=8, num_answers=4)
    tags = tok.encode_tags([["dog", "cat"], []], max_length=8)
    assert torch.equal(batch.tag_ids, tags.input_ids) and torch.equal(batch.tag_mask, tags.attention_mask)
    torch.testing.assert_close(batch.answer_targets, torch.tensor([[0.3, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert batch.target_boxes.tolist() == [[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]]
    with pytest.raises(ValueError, match="num_answers"):
        collate(samples, tok)


def test_loader_collate_sets_skips_aside() -> None:
    skipped = Skipped("corrupt_image", "x.jpg")
    item = LoaderCollate(tiny_tokenizer(), 8)([_sample(0, 0), skipped, _sample(1, 0)])
    assert item.skips == [skipped] and item.consumed == 3 and len(item.batch) == 2
    empty = LoaderCollate()([skipped])
    assert empty.batch is None and empty.consumed == 1


def test_images_of_different_sizes_are_named() -> None:
    """An eval rule that keeps the aspect ratio (eval_resize vilt) gives each image its own size: the batch
    error names the sizes and the way out instead of torch.stack's bare message."""
    samples = [{"image": torch.zeros(3, 32, 48), "meta": {"image": "a.png"}},
               {"image": torch.zeros(3, 32, 32), "meta": {"image": "b.png"}}]  # fmt: skip
    with pytest.raises(ValueError, match=r"images of different sizes in one batch: \(32, 48\) \(a.png\), "
                                         r"\(32, 32\) \(b.png\).*batch size 1"):  # fmt: skip
        collate(samples)
