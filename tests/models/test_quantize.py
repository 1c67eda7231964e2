"""vlp.models.quantize: int8 linear layers (an explicit, approximate option) stay close to fp32 and rank alike."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vlp
from vlp.config import ConfigError
from vlp.models.quantize import count_int8_linears, int8_model, quantize_linear_int8

# stated tolerance of the int8 option: every embedding within 0.02 in cosine of its fp32 value
MIN_COSINE = 0.98


def inputs(model, n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vocab = model.cfg.text.vocab_size
    ids = torch.randint(5, vocab, (n, 12), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[::2, 8:] = False  # padded rows as well
    images = torch.randn(n, 3, 32, 32, generator=g)
    return ids, mask, images


def fitted_clip_tiny(ids, mask, images, steps: int = 40):
    """clip-tiny fitted to match 16 random pairs (contrastive, Adam): a model whose scores have clear
    winners, unlike a freshly initialised one whose scores all tie."""
    torch.manual_seed(0)
    model = vlp.create_model("clip-tiny").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    labels = torch.arange(len(ids))
    for _ in range(steps):
        logits = model.logit_scale.exp() * model.encode_text(ids, mask) @ model.encode_image(images).T
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_int8_embeddings_are_close_to_fp32_and_rank_alike():
    ids, mask, images = inputs(vlp.create_model("clip-tiny"))
    model = fitted_clip_tiny(ids, mask, images)
    quantized = quantize_linear_int8(model)
    linears = sum(1 for m in model.modules() if isinstance(m, nn.Linear))
    assert count_int8_linears(quantized) == linears > 0 and count_int8_linears(model) == 0  # the original is kept
    with torch.inference_mode():
        text, image = model.encode_text(ids, mask), model.encode_image(images)
        q_text, q_image = quantized.encode_text(ids, mask), quantized.encode_image(images)
        again = model.encode_text(ids, mask)
    torch.testing.assert_close(again, text)  # quantizing a copy left the fp32 model as it was
    assert float((q_text * text).sum(-1).min()) >= MIN_COSINE
    assert float((q_image * image).sum(-1).min()) >= MIN_COSINE
    sims, q_sims = text @ image.T, q_text @ q_image.T
    # a text's nearest image changes only where fp32's own margin (best - second) is within twice the
    # largest score change: a random model's scores are close together, so only such near-ties may swap
    change = float((sims - q_sims).abs().max())
    top2 = sims.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * change
    assert clear.sum() >= 4 and torch.equal(sims.argmax(1)[clear], q_sims.argmax(1)[clear])
    # and the scores as a whole keep their order: rank correlation over every (text, image) pair
    ranks = [s.flatten().argsort().argsort().float() for s in (sims, q_sims)]
    corr = float(torch.corrcoef(torch.stack(ranks))[0, 1])
    assert corr >= 0.9, corr


def test_int8_model_refuses_another_device_by_name():
    model = vlp.create_model("clip-tiny")
    with pytest.raises(ConfigError, match="--int8.*CPU.*--device cpu"):
        int8_model(model, "cuda")
    assert count_int8_linears(int8_model(model, "cpu")) > 0
