"""LM: the captioning loss equals a manual shifted cross-entropy."""

import math

import pytest
import torch
from objectives_toy_model import CLS, VOCAB

from vlp.objectives import LM, LMConfig
from vlp.objectives.lm import shifted_lm_targets


def manual_lm(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, smoothing: float = 0.0, skip: int = 0):
    """Loop over positions: position t predicts token t+1 when token t+1 is real and past the prompt."""
    total, count = 0.0, 0
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            if not mask[b, t + 1] or t < skip:
                continue
            log_p = logits[b, t].detach().log_softmax(-1)
            target = int(ids[b, t + 1])
            total -= (1 - smoothing) * float(log_p[target]) + smoothing * float(log_p.mean())
            count += 1
    return total / count


def test_shifted_targets_on_a_hand_built_row() -> None:
    ids = torch.tensor([[2, 11, 12, 3, 0, 0]])
    targets = shifted_lm_targets(ids, ids != 0)
    assert targets.tolist() == [[11, 12, 3, -100, -100]]
    assert shifted_lm_targets(ids, ids != 0, prompt_length=1).tolist() == [[-100, 12, 3, -100, -100]]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_lm_equals_manual_shifted_cross_entropy(toy_model, batch, smoothing: float) -> None:
    outputs = toy_model(batch)
    loss, logs = LM(LMConfig(label_smoothing=smoothing))(outputs, batch)
    logits = toy_model.decode(batch.input_ids, batch.attention_mask, outputs.image)
    assert batch.input_ids[:, 0].eq(CLS).all()  # [CLS] is the BOS
    assert loss.item() == pytest.approx(manual_lm(logits, batch.input_ids, batch.attention_mask, smoothing), rel=1e-5)
    assert 0.0 <= logs["lm_acc"] <= 1.0
    assert loss.item() == pytest.approx(math.log(VOCAB), rel=0.3)  # an untrained decoder is near uniform
    loss.backward()
    assert toy_model.decoder.layers[0].cross_attn.q.weight.grad.abs().sum() > 0


def test_lm_bos_and_prompt(toy_model, batch) -> None:
    outputs = toy_model(batch)
    loss, _ = LM(LMConfig(bos_id=7, prompt_length=1))(outputs, batch)
    ids = batch.input_ids.clone()
    ids[:, 0] = 7
    logits = toy_model.decode(ids, batch.attention_mask, outputs.image)
    assert loss.item() == pytest.approx(manual_lm(logits, batch.input_ids, batch.attention_mask, skip=1), rel=1e-5)
