"""model.text_trim: text batches are cut to their longest real length (a multiple of 8) before the text
tower and the fusion module, and every output the padded batch gave is unchanged (to 1e-6)."""

from __future__ import annotations

import pytest
import torch

import vlp
from vlp import Batch
from vlp.objectives import Pretraining, build_objectives
from vlp.text.trim import trimmed_length

TOL = dict(atol=1e-6, rtol=1e-6)
LENGTHS = [3, 9, 17, 5]  # the longest is cut to 24 of 40
PADDED = 40


def batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(LENGTHS), PADDED, dtype=torch.bool)
    for i, n in enumerate(LENGTHS):
        mask[i, :n] = True
    ids = torch.randint(5, 1000, mask.shape, generator=g).masked_fill(~mask, 0)
    ids[:, 0] = 1  # [CLS]
    images = torch.randn(len(LENGTHS), 3, 32, 32, generator=g)
    return Batch(input_ids=ids, attention_mask=mask, images=images, image_index=torch.arange(len(LENGTHS)))


def pair(name: str, train: bool = False, **overrides):
    """The recipe's model with and without the cut, same weights."""
    models = []
    for trim in (8, 0):
        torch.manual_seed(0)
        model = vlp.create_model(name, **{"model.text_trim": trim, **overrides})
        models.append(model.train(train))
    models[1].load_state_dict(models[0].state_dict())
    return models


def text_lengths(model) -> list[int]:
    """Records the length of every batch the text tower's first layer (without layers: its embeddings) sees."""
    seen: list[int] = []
    first = model.text.layers[0] if len(model.text.layers) else model.text.embeddings
    first.register_forward_hook(lambda m, args, out: seen.append(out.shape[1]))
    return seen


def test_trimmed_length():
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask[0, :3], mask[1, :17] = True, True
    assert trimmed_length(mask) == 24 and trimmed_length(mask, 16) == 32 and trimmed_length(mask, 0) == 40
    assert trimmed_length(mask[:, :20]) == 20  # never above the batch's length
    assert trimmed_length(mask, pooling="last") == 40  # SigLIP pools the literal last position: never cut
    ids = torch.zeros(2, 40, dtype=torch.long)
    ids[0, 30] = 9  # argmax / end-token pooling at a padding position: it is kept
    assert trimmed_length(mask, 8, ids, "argmax") == 32
    assert trimmed_length(mask, 8, ids, "eos", eos_id=9) == 32
    assert trimmed_length(torch.zeros(2, 40, dtype=torch.bool)) == 8


@pytest.mark.parametrize("name", ["clip-tiny", "albef-tiny", "blip-tiny", "vlmo-tiny", "vilt-tiny", "meter-tiny"])
def test_outputs_equal_the_padded_ones(name):
    trimmed, padded = pair(name)
    b = batch()
    seen = text_lengths(trimmed)
    with torch.no_grad():
        out, ref = trimmed(b), padded(b)
        assert out.text.shape == ref.text.shape
        keep = b.attention_mask
        torch.testing.assert_close(out.text[keep], ref.text[keep], **TOL)
        if ref.text_embed is not None:
            torch.testing.assert_close(out.text_embed, ref.text_embed, **TOL)
            torch.testing.assert_close(
                trimmed.encode_text(b.input_ids, keep), padded.encode_text(b.input_ids, keep), **TOL
            )
            logits, ref_logits = (o.text_embed @ o.image_embed.T * o.logit_scale.exp() for o in (out, ref))
            torch.testing.assert_close(logits, ref_logits, **TOL)
        if trimmed.has_fusion:
            fused = trimmed.fuse(out.text, out.text_mask, out.image)
            ref_fused = padded.fuse(ref.text, ref.text_mask, ref.image)
            torch.testing.assert_close(fused.pooled, ref_fused.pooled, **TOL)
            if ref_fused.text is not None:  # every kept position of the fused text
                assert fused.text.shape == ref_fused.text.shape
                torch.testing.assert_close(fused.text[keep], ref_fused.text[keep], **TOL)
            if ref_fused.image is not None:
                torch.testing.assert_close(fused.image, ref_fused.image, **TOL)
            if "itm" in trimmed.heads:
                torch.testing.assert_close(trimmed.heads["itm"](fused.pooled), padded.heads["itm"](ref_fused.pooled))
    # the tower ran on 24 positions, not 40; encode_text of a pre-norm tower packs the rows: 3 + 9 + 17 + 5 tokens
    assert 24 in seen and set(seen) <= {24, sum(LENGTHS)}


@pytest.mark.parametrize("name", ["clip-tiny", "albef-tiny"])
def test_train_step_loss_and_gradients_equal_the_padded_ones(name):
    """ITC (ALBEF: + ITM and MLM, momentum distillation on): the same loss and gradients (dropout is 0).

    MLM draws its masks over the batch's full length and reads fused tokens at the masked positions, so its
    targets keep their shapes."""
    steps = []
    for model in pair(name, train=True):
        torch.manual_seed(1)
        objectives = dict(model.recipe.objectives)
        if name == "albef-tiny":
            objectives["mlm"] = {"mask_id": 4, "vocab_size": 1000, "special_ids": [0, 1, 2, 3], "prob": 0.3}
        step = Pretraining(model, build_objectives(objectives))
        torch.manual_seed(2)
        loss, logs = step(batch())
        loss.backward()
        steps.append((loss, logs, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (loss, logs, grads), (ref_loss, ref_logs, ref_grads) = steps
    torch.testing.assert_close(loss, ref_loss, **TOL)
    assert logs.keys() == ref_logs.keys() and grads.keys() == ref_grads.keys()
    if name == "albef-tiny":
        assert {"loss_itc", "loss_itm", "loss_mlm"} <= logs.keys()
    for key in logs:
        assert logs[key] == pytest.approx(ref_logs[key], abs=1e-6), key
    for key in grads:
        # to 1e-6 of each gradient's scale (float32 sums over 24 or 40 positions round differently; the
        # image tower's gradients, whose computation is the same, differ as much)
        scale = max(1.0, float(ref_grads[key].abs().max()))
        assert float((grads[key] - ref_grads[key]).abs().max()) <= 1e-6 * scale, key


def test_blip_decoder_logits_and_lm_loss_equal_the_padded_ones():
    """BLIP's captioning decoder: logits at every real position and the LM loss (targets keep their shapes)."""
    trimmed, padded = pair("blip-tiny")
    b = batch()
    seen = []
    trimmed.decoder.layers[0].register_forward_hook(lambda m, args, out: seen.append(out.shape[1]))
    lm = build_objectives({"lm": {}})["lm"][1]
    with torch.no_grad():
        out, ref = trimmed(b), padded(b)
        logits = trimmed.decode(b.input_ids, b.attention_mask, out.image)
        ref_logits = padded.decode(b.input_ids, b.attention_mask, ref.image)
        assert logits.shape == ref_logits.shape
        keep = b.attention_mask
        torch.testing.assert_close(logits[keep], ref_logits[keep], **TOL)
        loss, logs = lm.compute(out, b)
        ref_loss, ref_logs = lm.compute(ref, b)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(logs["lm_acc"], ref_logs["lm_acc"])
    assert seen and set(seen) == {24}


def test_siglip_last_pooling_is_not_cut():
    trimmed, padded = pair("siglip-tiny", **{"model.text.pooling": "last"})  # as siglip.yaml pools
    b = batch()
    seen = text_lengths(trimmed)
    with torch.no_grad():
        torch.testing.assert_close(trimmed(b).text_embed, padded(b).text_embed, **TOL)
    assert set(seen) == {PADDED}


def test_a_training_step_measures_each_mask_once(monkeypatch):
    """The cut costs a host sync; ALBEF's step asks for it in the text tower, the fusion, MLM's second pass and
    the momentum model, all with the batch's own mask: measured once for it, once for ITM's gathered rows."""
    import vlp.text.trim as trim

    calls = []
    measure = trim._measure
    monkeypatch.setattr(trim, "_measure", lambda *a: calls.append(a[0].shape) or measure(*a))
    model = pair("albef-tiny", train=True)[0]
    objectives = dict(model.recipe.objectives)
    objectives["mlm"] = {"mask_id": 4, "vocab_size": 1000, "special_ids": [0, 1, 2, 3], "prob": 0.3}
    step = Pretraining(model, build_objectives(objectives))
    loss, logs = step(batch())
    assert {"loss_itc", "loss_itm", "loss_mlm"} <= logs.keys()
    assert len(calls) == 2, calls
    mask = batch().attention_mask.clone()
    assert trimmed_length(mask) == 24 and trimmed_length(mask) == 24 and len(calls) == 3
    mask[0, 30] = True  # an in-place edit is seen: measured again
    assert trimmed_length(mask) == 32 and len(calls) == 4


class PadToMax:
    """A tokenizer that pads every batch to ``max_length``, as CLIP's BPE tokenizer does (to 77)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.pad_id = tokenizer, tokenizer.pad_id

    def __call__(self, texts, max_length: int = 40):
        return self.tokenizer(texts, max_length=max_length, padding="max_length")


def test_zeroshot_and_retrieval_text_encoding_run_on_the_cut_batch():
    """Zero-shot prompts and retrieval captions padded to 40: the tower reads 8 positions, embeddings as padded."""
    from vlp.tasks.retrieval.head import encode
    from vlp.tasks.zeroshot.head import class_embeddings
    from vlp.text import Tokenizer

    captions = ["a red circle", "two blue squares left of a green triangle", "a small yellow star"] * 2
    tok = PadToMax(Tokenizer.train(captions * 4, vocab_size=120))
    images = [Batch(images=torch.randn(3, 3, 32, 32), image_index=torch.arange(3))]
    trimmed, padded = pair("clip-tiny")
    seen = text_lengths(trimmed)
    with torch.no_grad():
        classes = [
            class_embeddings(m, tok, ["red", "green"], ["a photo of a {}.", "a {} shape"]) for m in (trimmed, padded)
        ]
        encoded = [encode(m, images, captions, tok, mode="dual", device="cpu") for m in (trimmed, padded)]
    torch.testing.assert_close(classes[0], classes[1], **TOL)
    torch.testing.assert_close(encoded[0].text_embed, encoded[1].text_embed, **TOL)
    torch.testing.assert_close(encoded[0].image_embed, encoded[1].image_embed, **TOL)
    assert seen and PADDED not in seen  # prompts and captions ran without their padding (packed end to end)
