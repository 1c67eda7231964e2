"""encode_text / encode_image run the towers' last layer for the pooled token only (and the text on the trimmed
batch): the embeddings and their gradients equal the ones pooled from every token of the full pass (to 1e-6)."""

from __future__ import annotations

import pytest
import torch

import vlp
from vlp.layers import Transformer

TOL = dict(atol=1e-6, rtol=1e-6)


def text_batch(vocab: int, seed: int = 0, padded: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(4, padded, dtype=torch.bool)
    for i, n in enumerate([3, 9, 17, 5]):
        mask[i, :n] = True
    ids = torch.randint(5, vocab - 2, mask.shape, generator=g).masked_fill(~mask, 0)
    ids[:, 0] = 1
    return ids, mask


def full_pass(model, ids, mask, images):
    """The embeddings pooled from every token of the unshortened towers (what model(batch) computes)."""
    model.cfg.text_trim = 0
    tokens = model.text(ids, mask)
    text = torch.nn.functional.normalize(model.text_proj(model.text.pool(tokens, ids, mask)), dim=-1)
    image = torch.nn.functional.normalize(model.image_proj(model.vision(images).tokens[:, 0]), dim=-1)
    model.cfg.text_trim = 8
    return text, image


@pytest.mark.parametrize("pooling", ["eos", "argmax", "cls"])
@pytest.mark.parametrize("causal", [True, False])
def test_embeddings_and_gradients_equal_the_full_pass(pooling, causal):
    torch.manual_seed(0)
    model = vlp.create_model("clip-tiny", **{"model.text.pooling": pooling, "model.text.causal": causal}).train()
    ids, mask = text_batch(model.cfg.text.vocab_size)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    seen = []
    hook = model.text.layers[-1].mlp.register_forward_hook(lambda m, a, out: seen.append(out.shape[:2].numel()))
    results = []
    for fast in (True, False):
        model.zero_grad()
        text, image = (
            (model.encode_text(ids, mask), model.encode_image(images)) if fast else full_pass(model, ids, mask, images)
        )
        (text.square().sum() + (text @ image.T).sum() + image.pow(3).sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((text.detach(), image.detach(), grads))
    hook.remove()
    (text, image, grads), (ref_text, ref_image, ref_grads) = results
    torch.testing.assert_close(text, ref_text, **TOL)
    torch.testing.assert_close(image, ref_image, **TOL)
    assert grads.keys() == ref_grads.keys()
    for key in grads:
        scale = max(1.0, float(ref_grads[key].abs().max()))
        assert float((grads[key] - ref_grads[key]).abs().max()) <= 1e-6 * scale, key
    assert seen == [4, 4 * 40]  # the last layer's MLP ran on one pooled token per row, then on all 4 x 40


def test_block_forward_at_equals_forward_at_those_positions():
    """A hand-picked set of positions per row, causal and masked: the same rows as the full block's output."""
    torch.manual_seed(0)
    stack = Transformer(16, 2, 4, norm_first=True, act="quick_gelu").eval()
    x = torch.randn(3, 7, 16)
    keep = torch.ones(3, 7, dtype=torch.bool)
    keep[1, 5:] = False
    index = torch.tensor([[0, 6], [4, 2], [3, 3]])
    for causal in (False, True):
        full = stack(x, keep, causal=causal)
        at = stack.forward_at(x, index, keep, causal=causal)
        torch.testing.assert_close(at, full.gather(1, index[..., None].expand(-1, -1, 16)), **TOL)


def test_the_attention_bias_is_built_once_per_tower(monkeypatch):
    """A causal, masked text tower of 2 layers: one bias for the stack (it was built in every layer)."""
    import vlp.layers.attention as attention
    import vlp.layers.block as block

    calls = []
    build = attention.attention_bias
    counting = lambda *a, **k: calls.append(a[0].shape if a[0] is not None else None) or build(*a, **k)  # noqa: E731
    monkeypatch.setattr(block, "attention_bias", counting)
    monkeypatch.setattr(attention, "attention_bias", counting)
    torch.manual_seed(0)
    model = vlp.create_model("clip-tiny", **{"model.text_trim": 0}).eval()
    ids, mask = text_batch(model.cfg.text.vocab_size)
    with torch.no_grad():
        model.text(ids, mask)
    assert model.text.num_layers == 2 and len(calls) == 1


def test_packed_text_equals_the_padded_one_and_left_padding_is_not_packed():
    """encode_text packs the rows' real tokens end to end (3 + 9 + 17 + 5 = 34 of 4 x 40 positions); a
    left-padded batch is not packed (the trimmed, padded pass runs) and gives the same embeddings too."""
    torch.manual_seed(0)
    model = vlp.create_model("clip-tiny", **{"model.text.pooling": "argmax"}).eval()
    ids, mask = text_batch(model.cfg.text.vocab_size)
    seen = []
    model.text.layers[0].register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape[:2])))
    with torch.no_grad():
        packed = model.encode_text(ids, mask)
        model.cfg.text_trim = 0
        padded = model.encode_text(ids, mask)
        model.cfg.text_trim = 8
        left_ids, left_mask = ids.flip(1), mask.flip(1)  # padding first: argmax still pools a real token
        left = model.encode_text(left_ids, left_mask)
        model.cfg.text_trim = 0
        left_padded = model.encode_text(left_ids, left_mask)
    torch.testing.assert_close(packed, padded, **TOL)
    torch.testing.assert_close(left, left_padded, **TOL)
    assert seen[:2] == [(1, 34), (4, 40)] and seen[2][0] == 4


def test_a_batch_of_many_real_tokens_is_not_packed(monkeypatch):
    """Past PACK_MAX_TOKENS real tokens the (T, T) packed attention costs more than the padded pass: the trimmed,
    padded pass runs instead, with the same embeddings."""
    from vlp.text import encoder

    torch.manual_seed(0)
    model = vlp.create_model("clip-tiny", **{"model.text.pooling": "argmax"}).eval()
    ids, mask = text_batch(model.cfg.text.vocab_size)  # 34 real tokens
    seen = []
    model.text.layers[0].register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape[:2])))
    monkeypatch.setattr(encoder, "PACK_MAX_TOKENS", 33)
    with torch.no_grad():
        assert model.text.forward_packed(ids, mask) is None
        capped = model.encode_text(ids, mask)
        model.cfg.text_trim = 0
        padded = model.encode_text(ids, mask)
    torch.testing.assert_close(capped, padded, **TOL)
    assert seen == [(4, 24), (4, 40)]  # trimmed to 17 -> 24 positions, not packed; then the untrimmed pass
