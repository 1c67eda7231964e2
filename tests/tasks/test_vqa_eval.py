"""VQA classification: designed logits give the hand-computed official accuracy; the soft-target
loss equals a naive BCE; the vqa head is sized to the answer vocabulary."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import vlp
from vlp.config import ConfigError
from vlp.core.outputs import FusedOutput, VisualTokens
from vlp.data.batch import Batch
from vlp.tasks import vqa
from vlp.text import Tokenizer

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
VOCAB = ["yes", "no", "2", "red", "green"]
# question -> (predicted vocabulary index, 10 human answers, answer type)
QUESTIONS = [
    (0, ["yes"] * 10, "yes/no"),  # all agree: 1.0
    (1, ["no"] * 2 + ["yes"] * 8, "yes/no"),  # 2 match: leave-one-out mean (2 x 1/3 + 8 x 2/3) / 10 = 0.6
    (2, ["2"] * 3 + ["3"] * 7, "number"),  # 3 match: (3 x 2/3 + 7 x 1) / 10 = 0.9
    (3, ["blue"] * 5 + ["green"] * 5, "other"),  # "red": 0
    (4, ["green"] * 10, "other"),  # 1.0
    (1, ["no"] * 10, "yes/no"),  # 1.0
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(WORDS * 3, vocab_size=80)


class DesignedVQA(nn.Module):
    """Question k (the word WORDS[k]) gets logits that peak at QUESTIONS[k][0]."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.word_index = {tokenizer.convert_tokens_to_ids([w])[0]: k for k, w in enumerate(WORDS)}
        table = torch.full((len(WORDS), len(VOCAB)), -3.0)
        for k, (answer, _, _) in enumerate(QUESTIONS):
            table[k, answer] = 3.0
        self.heads = nn.ModuleDict({"vqa": nn.Sequential(Lookup(table))})

    @property
    def table(self) -> nn.Parameter:
        return self.heads["vqa"][-1].table

    def text_inputs(self, batch):
        return batch.input_ids, batch.attention_mask, batch.token_type_ids

    def text_tokens(self, ids, mask, types=None):
        return torch.tensor([self.word_index[int(i)] for i in ids[:, 1]]).float()[:, None, None]

    def image_tokens(self, batch):
        return VisualTokens(batch.images.flatten(1)[:, :1, None], torch.ones(len(batch.images), 1, dtype=torch.bool))

    def fuse(self, text, mask, image):
        return FusedOutput(text=None, image=None, pooled=text[:, 0])


class Lookup(nn.Module):
    """The vqa head: pooled = question index -> that question's row of logits."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)
        self.out_features = table.shape[1]

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.table[pooled[:, 0].long()]


def _samples() -> list[dict]:
    return [
        {"image": torch.zeros(3, 2, 2), "text": WORDS[k],
         "meta": {"question_id": k, "answers": answers, "answer_type": kind, "question_type": "what"}}
        for k, (_, answers, kind) in enumerate(QUESTIONS)
    ]  # fmt: skip


def test_designed_logits_give_the_official_accuracy(tokenizer):
    got = vqa.evaluate(DesignedVQA(tokenizer), tokenizer, _samples(), answer_vocab=VOCAB, batch_size=4,
                       keep_predictions=True)  # fmt: skip
    assert got["method"] == "classify" and got["n_questions"] == 6
    assert got["overall"] == pytest.approx(100 * (1 + 0.6 + 0.9 + 0 + 1 + 1) / 6)
    assert got["per_answer_type"]["yes/no"] == pytest.approx(100 * (1 + 0.6 + 1) / 3)
    assert got["per_answer_type"]["number"] == pytest.approx(90.0)
    assert got["per_answer_type"]["other"] == pytest.approx(50.0)
    assert [p["answer"] for p in got["predictions"]] == ["yes", "no", "2", "red", "green", "no"]
    # the prior answers "yes" (18 of 30 yes/no answers), "3" and "green" (15 of 20): only the last
    # yes/no question (all "no") is missed
    assert got["chance"]["overall"] == pytest.approx(100 * 5 / 6)
    assert got["chance"]["per_answer_type"] == pytest.approx({"yes/no": 100 * 2 / 3, "number": 100.0, "other": 100.0})


def test_answer_vocab_must_fit_the_head(tokenizer):
    with pytest.raises(ConfigError, match="vqa head has 5 answers"):
        vqa.evaluate(DesignedVQA(tokenizer), tokenizer, _samples(), answer_vocab=VOCAB[:3])


def test_soft_target_loss_is_bce_summed_over_answers(tokenizer):
    model = DesignedVQA(tokenizer)
    with torch.no_grad():
        model.table.copy_(torch.randn(model.table.shape, generator=torch.Generator().manual_seed(0)))
    tok = tokenizer(WORDS[:3], max_length=8)
    targets = torch.tensor([[1.0, 0, 0, 0.3, 0], [0, 0.6, 0.9, 0, 0], [0, 0, 0, 0, 0]])
    batch = Batch(input_ids=tok.input_ids, attention_mask=tok.attention_mask.bool(), images=torch.zeros(3, 3, 2, 2),
                  answer_targets=targets)  # fmt: skip
    loss, logs = vqa.VQAClassifier(model)(batch)
    naive, logits = 0.0, model.table.detach()
    for b in range(3):
        for a in range(5):
            p = 1 / (1 + math.exp(-float(logits[b, a])))
            t = float(targets[b, a])
            naive -= t * math.log(p) + (1 - t) * math.log(1 - p)
    assert loss.item() == pytest.approx(naive / 3, rel=1e-5)
    best = logits[:3].argmax(1)
    assert logs["vqa_score"] == pytest.approx(float(targets[torch.arange(3), best].mean()))


def test_vqa_head_is_sized_to_the_vocabulary():
    model = vlp.create_model("vilt-tiny")
    assert "vqa" not in model.heads
    vqa.ensure_vqa_head(model, 7)
    assert model.heads["vqa"][-1].out_features == 7 and model.cfg.heads["vqa"] == {"num_answers": 7}
    head = model.heads["vqa"]
    vqa.ensure_vqa_head(model, 7)
    assert model.heads["vqa"] is head  # already fits: kept, weights and all
    with pytest.raises(ConfigError, match="fusion module"):
        vqa.ensure_vqa_head(vlp.create_model("clip-tiny"), 7)


def test_answer_prior_breaks_ties_alphabetically():
    assert vqa.answer_prior([["b", "a"], ["c"]], ["other", "number"]) == ["a", "c"]
