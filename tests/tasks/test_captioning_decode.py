"""Captioning on a tiny BLIP: the LM fine-tuning loss leaves the prompt out, decoding matches a
step-by-step reference, and evaluate() reports exactly the caption metrics of its captions."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from shapes_task_helpers import manual_greedy

import vlp
from vlp.config import ConfigError
from vlp.data.batch import Batch
from vlp.metrics import caption_metrics, resolve_backend
from vlp.tasks import captioning
from vlp.tasks.common import image_batch
from vlp.text import Tokenizer

CAPTIONS = ["a red circle on the left.", "two blue squares.", "a small green triangle above a star."]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(CAPTIONS * 3 + ["a picture of"], vocab_size=120)


@pytest.fixture(scope="module")
def blip() -> torch.nn.Module:
    torch.manual_seed(0)
    return vlp.create_model("blip-tiny").eval()


def _images(n: int = 3) -> list[Image.Image]:
    colours = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (240, 240, 240)]
    return [Image.new("RGB", (36, 36), colours[i % 4]) for i in range(n)]


def test_lm_loss_counts_the_caption_not_the_prompt(blip, tokenizer):
    module = captioning.CaptionFinetune(blip, tokenizer, prompt="a picture of ", max_text_len=24)
    pixels = image_batch(blip, _images()).images
    tok = tokenizer(CAPTIONS, max_length=24)  # what the loader gives: the bare captions
    batch = Batch(input_ids=tok.input_ids, attention_mask=tok.attention_mask.bool(), images=pixels,
                  meta=[{"text": c} for c in CAPTIONS])  # fmt: skip
    loss, logs = module(batch)
    total, count = 0.0, 0
    with torch.no_grad():
        for row, text in enumerate(CAPTIONS):
            ids = tokenizer(["a picture of " + text], max_length=24).input_ids[0].tolist()
            image = blip.image_tokens(pixels[row : row + 1])
            logp = torch.log_softmax(blip.decode(torch.tensor([ids]), None, image)[0], -1)
            # [CLS] a picture of <caption> [SEP]: position t predicts token t + 1; the 3 prompt words are not targets
            for t in range(1 + 3, len(ids)):
                total -= float(logp[t - 1, ids[t]])
                count += 1
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    assert 0.0 <= logs["lm_acc"] <= 1.0 and logs["loss_lm"] == pytest.approx(loss.item())


def test_greedy_captions_match_step_by_step_decoding(blip, tokenizer):
    images = _images()
    got = captioning.caption(blip, tokenizer, images, strategy="greedy", prompt="a picture of ", max_new_tokens=6)
    start = captioning.prompt_ids(tokenizer, "a picture of ")
    assert tokenizer.convert_ids_to_tokens(start) == ["[CLS]", "a", "picture", "of"]
    pixels = image_batch(blip, images).images
    for row, text in enumerate(got):
        assert text == manual_greedy(blip, tokenizer, start, blip.image_tokens(pixels[row : row + 1]), 6)


def test_nucleus_and_beam_decoding(blip, tokenizer):
    images = _images()
    greedy = captioning.caption(blip, tokenizer, images, strategy="greedy", max_new_tokens=6)
    # a vanishing nucleus keeps only the most likely token: greedy decoding
    assert captioning.caption(blip, tokenizer, images, strategy="nucleus", top_p=1e-9, max_new_tokens=6) == greedy
    one = captioning.caption(blip, tokenizer, images, strategy="nucleus", seed=3, max_new_tokens=6)
    assert one == captioning.caption(blip, tokenizer, images, strategy="nucleus", seed=3, max_new_tokens=6)
    beams = captioning.caption(blip, tokenizer, images, strategy="beam", num_beams=3, max_new_tokens=6)
    assert len(beams) == 3 and all(isinstance(c, str) for c in beams)
    with pytest.raises(ValueError, match="strategy"):
        captioning.caption(blip, tokenizer, images, strategy="topk")


def test_evaluate_reports_the_metrics_of_its_own_captions(blip, tokenizer):
    pixels = image_batch(blip, _images(4)).images
    samples = [{"image": pixels[i], "meta": {"index": i, "image_id": 10 + i, "captions": [CAPTIONS[i % 3], "shapes."]}}
               for i in range(4)]  # fmt: skip
    options = captioning.DecodeOptions(strategy="beam", num_beams=2, max_new_tokens=6)
    got = captioning.evaluate(blip, tokenizer, samples, prompt="", options=options, backend="builtin", batch_size=3,
                              keep_predictions=True)  # fmt: skip
    assert got["backend"] == "builtin" and got["n_images"] == 4
    preds = {p["image_id"]: p["caption"] for p in got["predictions"]}
    assert list(preds) == [10, 11, 12, 13]
    expected = caption_metrics(preds, {10 + i: samples[i]["meta"]["captions"] for i in range(4)}, backend="builtin")
    assert set(expected) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    for key, value in expected.items():
        assert got[key] == pytest.approx(value) and math.isfinite(value)


def test_backend_is_reported_and_missing_references_are_an_error(blip, tokenizer):
    pixels = image_batch(blip, _images(1)).images
    one = [{"image": pixels[0], "meta": {"index": 0, "captions": ["a red circle."]}}]
    options = captioning.DecodeOptions(strategy="greedy", max_new_tokens=3)
    got = captioning.evaluate(blip, tokenizer, one, options=options, backend="auto", meteor=False)
    assert got["backend"] == resolve_backend("auto")
    with pytest.raises(ConfigError, match="no reference captions"):
        captioning.evaluate(blip, tokenizer, [{"image": pixels[0], "meta": {"index": 0}}], options=options)
    with pytest.raises(ConfigError, match="text decoder"):
        captioning.caption(vlp.create_model("albef-tiny"), tokenizer, _images(1))
