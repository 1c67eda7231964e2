"""MLM: loss on masked positions only, checked against a full-vocabulary manual pass."""

import pytest
import torch
import torch.nn.functional as F
from objectives_toy_model import CLS, MASK, PAD, SEP, VOCAB, ToyTokenizer

from vlp.config import ConfigError
from vlp.objectives import MLM, build_objectives


def build_mlm(**options) -> MLM:
    return build_objectives({"mlm": options}, tokenizer=ToyTokenizer())["mlm"][1]


def manual_mlm(model, batch, masked_ids, labels, image) -> torch.Tensor:
    """Head over every position, cross-entropy with ignore_index: the straightforward way."""
    text = model.text_tokens(masked_ids, batch.attention_mask, batch.token_type_ids)
    logits = model.heads["mlm"](model.fuse(text, batch.attention_mask, image).text)
    return logits


@pytest.mark.parametrize("strategy", ["random", "whole_word", "span"])
def test_mlm_loss_matches_manual(toy_model, batch, strategy: str) -> None:
    mlm = build_mlm(strategy=strategy, prob=0.4, seed=7)
    outputs = toy_model(batch)
    loss, logs = mlm(outputs, batch)
    masked_ids, labels = build_mlm(strategy=strategy, prob=0.4).mask(
        batch.input_ids, batch.attention_mask, batch.word_ids, torch.Generator().manual_seed(7)
    )
    assert (labels != -100).any()
    logits = manual_mlm(toy_model, batch, masked_ids, labels, outputs.image)
    expected = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    where = labels != -100
    assert logs["mlm_acc"] == pytest.approx((logits[where].argmax(-1) == labels[where]).float().mean().item())
    # labels only where chosen, and only on real word pieces
    assert not where[torch.isin(batch.input_ids, torch.tensor([PAD, CLS, SEP]))].any()
    assert torch.equal(labels[where], batch.input_ids[where])
    loss.backward()
    assert toy_model.word.weight.grad.abs().sum() > 0


def test_mlm_momentum_distillation(toy_model, batch) -> None:
    torch.manual_seed(0)
    outputs = toy_model(batch)
    momentum_model = type(toy_model)()  # a different set of weights stands in for the EMA
    outputs.momentum = momentum_model(batch)
    loss, _ = build_mlm(prob=0.5, seed=1, distill_alpha=0.3)(outputs, batch)
    masked_ids, labels = build_mlm(prob=0.5).mask(
        batch.input_ids, batch.attention_mask, batch.word_ids, torch.Generator().manual_seed(1)
    )
    where = labels != -100
    logits = manual_mlm(toy_model, batch, masked_ids, labels, outputs.image)[where]
    with torch.no_grad():
        soft = manual_mlm(momentum_model, batch, masked_ids, labels, outputs.momentum.image)[where].softmax(-1)
    hard = F.cross_entropy(logits, labels[where])
    distill = -(soft * logits.log_softmax(-1)).sum(-1).mean()
    assert loss.item() == pytest.approx((0.7 * hard + 0.3 * distill).item(), rel=1e-5)


def test_mlm_ids_come_from_the_tokenizer() -> None:
    mlm = build_mlm()
    assert mlm.cfg.mask_id == MASK and mlm.cfg.vocab_size == VOCAB
    assert set(mlm.cfg.special_ids) >= {PAD, CLS, SEP, MASK}
    assert not torch.isin(mlm.random_ids, torch.tensor(mlm.cfg.special_ids)).any()
    assert len(mlm.random_ids) == VOCAB - len(mlm.cfg.special_ids)
    with pytest.raises(ConfigError, match="objectives.mlm.mask_id.*tokenizer"):
        build_objectives({"mlm": {}})
    explicit = build_objectives({"mlm": {"mask_id": 9, "vocab_size": 20}})["mlm"][1]
    assert explicit.cfg.mask_id == 9 and len(explicit.random_ids) == 19


def test_whole_word_needs_word_ids(toy_model, batch) -> None:
    with pytest.raises(ConfigError, match="objectives.mlm.*word_ids.*whole_word"):
        build_mlm(strategy="whole_word")(toy_model(batch), batch.replace(word_ids=None))


def test_masking_with_a_trained_vlp_tokenizer() -> None:
    from vlp.text import Tokenizer

    captions = ["a red circle left of a blue square", "two green triangles", "a yellow hexagon above circles"] * 20
    tok = Tokenizer.train(captions, vocab_size=40)  # small: many words split into several pieces
    text = tok(captions[:3], max_length=16)
    mlm = build_objectives({"mlm": {"strategy": "whole_word", "prob": 0.5}}, tokenizer=tok)["mlm"][1]
    assert mlm.cfg.mask_id == tok.mask_id and set(mlm.cfg.special_ids) == set(tok.special_ids)
    pieces_per_word = [row.count(w) for row in text.word_ids.tolist() for w in set(row) - {-1}]
    assert max(pieces_per_word) > 1  # multi-piece words exist, so whole-word masking is really tested
    for seed in range(20):
        masked, labels = mlm.mask(
            text.input_ids, text.attention_mask, text.word_ids, torch.Generator().manual_seed(seed)
        )
        chosen = labels != -100
        assert not chosen[torch.isin(text.input_ids, torch.tensor(sorted(tok.special_ids)))].any()
        for b in range(3):
            for w in set(text.word_ids[b].tolist()) - {-1}:
                pieces = chosen[b][text.word_ids[b] == w]
                assert pieces.all() or not pieces.any()
