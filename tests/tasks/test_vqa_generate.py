"""Generative VQA on a tiny BLIP: target masks, BLIP's weighted answer loss, decoding and
candidate ranking against step-by-step references, and metrics equal to the metric function."""

from __future__ import annotations

import math

import pytest
import torch
from shapes_task_helpers import manual_greedy

import vlp
from vlp.config import ConfigError
from vlp.core.outputs import VisualTokens
from vlp.data.batch import Batch
from vlp.metrics import vqa_score
from vlp.tasks import vqa
from vlp.tasks.captioning import DecodeOptions
from vlp.tasks.vqa import VQAGenerator, answer_sequences, generate_answers, rank_answers, weighted_answers
from vlp.text import Tokenizer

QUESTIONS = ["what color is the circle?", "how many shapes are there?", "is there a red square on the left?"]
ANSWERS = [["red"] * 7 + ["blue"] * 3, ["2"] * 10, ["yes"] * 9 + ["no"]]
CANDIDATES = ["red", "blue", "2", "3", "yes", "no"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(QUESTIONS * 2 + CANDIDATES * 2 + ["left right green"], vocab_size=120)


@pytest.fixture(scope="module")
def blip() -> torch.nn.Module:
    torch.manual_seed(0)
    return vlp.create_model("blip-tiny").eval()


def _batch(tokenizer, questions=QUESTIONS, answers=ANSWERS) -> Batch:
    tok = tokenizer(questions, max_length=24)
    images = torch.randn(len(questions), 3, 32, 32, generator=torch.Generator().manual_seed(1))
    meta = [{"text": q, "answers": a, "answer_type": "other", "question_id": i}
            for i, (q, a) in enumerate(zip(questions, answers))]  # fmt: skip
    return Batch(input_ids=tok.input_ids, attention_mask=tok.attention_mask.bool(),
                 token_type_ids=tok.token_type_ids, images=images, meta=meta)  # fmt: skip


def test_target_mask_covers_the_answer_only(tokenizer):
    ids, mask, targets = answer_sequences(tokenizer, ["how many shapes"], ["2"], "prefix", 24, "cpu")
    # [CLS] how many shapes [SEP] 2 [SEP]: targets are the next tokens "how many shapes [SEP] 2 [SEP]"
    assert tokenizer.convert_ids_to_tokens(ids[0]) == ["[CLS]", "how", "many", "shapes", "[SEP]", "2", "[SEP]"]
    assert targets.tolist() == [[False, False, False, False, True, True]]
    ids, _, targets = answer_sequences(tokenizer, ["how many shapes"], ["2"], "blip", 24, "cpu")
    assert tokenizer.convert_ids_to_tokens(ids[0]) == ["[CLS]", "2", "[SEP]"] and targets.tolist() == [[True, True]]


def test_weighted_answers_share_the_annotators_and_follow_flips():
    meta = [{"answers": ["red"] * 7 + ["blue"] * 3}, {"answers": ["left"] * 10, "flipped": True}]
    rows, answers, weights = weighted_answers(meta)
    assert list(zip(rows, answers, weights)) == [(0, "red", 0.7), (0, "blue", pytest.approx(0.3)), (1, "right", 1.0)]
    with pytest.raises(ConfigError, match="no human answers"):
        weighted_answers([{"question_id": 5}])


def test_generator_loss_is_blips_weighted_answer_loss(blip, tokenizer):
    batch = _batch(tokenizer)
    module = VQAGenerator(blip, tokenizer, style="prefix", max_text_len=24)
    loss, _ = module(batch)
    naive = 0.0
    with torch.no_grad():
        for row, (question, answers) in enumerate(zip(QUESTIONS, ANSWERS)):
            image = blip.image_tokens(batch.images[row : row + 1])
            for answer in dict.fromkeys(answers):
                tok = tokenizer([question], pair=[answer], max_length=24)
                logp = torch.log_softmax(blip.decode(tok.input_ids, None, image)[0], -1)
                ids, types = tok.input_ids[0].tolist(), tok.token_type_ids[0].tolist()
                nll = -sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids)) if types[t] == 1)
                naive += answers.count(answer) / len(answers) * nll
    assert loss.item() == pytest.approx(naive / 3, rel=1e-4)


@pytest.mark.parametrize("style", ["prefix", "blip"])
def test_greedy_answers_match_step_by_step_decoding(blip, tokenizer, style):
    batch = _batch(tokenizer)  # three questions of different lengths: decoded in length groups
    got = generate_answers(blip, tokenizer, batch, style, DecodeOptions(strategy="greedy", max_new_tokens=4))
    assert len(got) == 3 and all(isinstance(a, str) for a in got)
    with torch.no_grad():
        for row, question in enumerate(QUESTIONS):
            tok = tokenizer([question], max_length=24)
            image = blip.image_tokens(batch.images[row : row + 1])
            if style == "prefix":
                prompt, context = tok.input_ids[0].tolist(), image
            else:
                mask = tok.attention_mask.bool()
                fused = blip.fuse(blip.text_tokens(tok.input_ids, mask), mask, image)
                prompt, context = [tokenizer.cls_id], VisualTokens(fused.text, mask)
            assert got[row] == manual_greedy(blip, tokenizer, prompt, context, 4)


def test_rank_picks_the_most_likely_candidate(blip, tokenizer):
    batch = _batch(tokenizer)
    got = rank_answers(blip, tokenizer, batch, "prefix", CANDIDATES, chunk=5)
    with torch.no_grad():
        for row, question in enumerate(QUESTIONS):
            image = blip.image_tokens(batch.images[row : row + 1])
            scores = []
            for answer in CANDIDATES:
                tok = tokenizer([question], pair=[answer], max_length=24)
                logp = torch.log_softmax(blip.decode(tok.input_ids, None, image)[0], -1)
                ids, types = tok.input_ids[0].tolist(), tok.token_type_ids[0].tolist()
                scores.append(sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids)) if types[t] == 1))
            best = max(range(len(CANDIDATES)), key=lambda a: scores[a])
            assert got[row] == CANDIDATES[best], (row, scores)
            assert all(math.isfinite(s) for s in scores)


def test_generative_eval_scores_its_predictions_with_the_official_metric(blip, tokenizer):
    samples = [
        {"image": torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(k)), "text": q,
         "meta": {"question_id": k, "answers": a, "answer_type": t, "question_type": "what"}}
        for k, (q, a, t) in enumerate(zip(QUESTIONS, ANSWERS, ["other", "number", "yes/no"]))
    ]  # fmt: skip
    for method in ("generate", "rank"):
        got = vqa.evaluate(blip, tokenizer, samples, method=method, answer_vocab=CANDIDATES, batch_size=2,
                           keep_predictions=True)  # fmt: skip
        preds = [p["answer"] for p in got["predictions"]]
        assert got["method"] == method and len(preds) == 3
        if method == "rank":
            assert set(preds) <= set(CANDIDATES)
        expected = vqa_score(preds, ANSWERS, answer_types=["other", "number", "yes/no"])
        assert got["overall"] == pytest.approx(expected["overall"])
        assert got["per_answer_type"] == pytest.approx(expected["per_answer_type"])


def test_predict_api_takes_pil_images_and_questions(blip, tokenizer):
    from PIL import Image

    images = [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (32, 32), (10, 10, 200))]
    got = vqa.predict(blip, tokenizer, images, QUESTIONS[:2], method="rank", answer_vocab=CANDIDATES)
    assert len(got) == 2 and set(got) <= set(CANDIDATES)
    with pytest.raises(ValueError, match="one question per image"):
        vqa.predict(blip, tokenizer, images, QUESTIONS[:1])
    with pytest.raises(ConfigError, match="text decoder"):
        vqa.predict(vlp.create_model("albef-tiny"), tokenizer, images, QUESTIONS[:2], method="generate")
