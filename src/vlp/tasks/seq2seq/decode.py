"""Decoding for the OFA-style encoder-decoder: a KV-cached decode step and the three constrained outputs.

The encoder runs once per batch (:func:`~vlp.objectives.seq2seq.encoder_context`); the decoder then runs one
token at a time, keeping every layer's self-attention keys and values of the tokens so far and the
cross-attention keys and values of the encoder output (computed once), so a step costs one token's
work instead of the whole prefix's. Its logits equal ``model.decode`` on the whole prefix (tested).

Constraints on what may be generated (OFA's inference):

- captions: any ordinary word piece (no location tokens, no [PAD] [CLS] [MASK]);
- answers: free text like captions, or restricted to an answer list by a trie of its token sequences;
- boxes: exactly four location tokens, then dequantized (:mod:`vlp.text.locations`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vlp.core.outputs import VisualTokens
from vlp.layers.attention import attention_bias
from vlp.objectives.seq2seq import encoder_context
from vlp.tasks.decoding import DecodeOptions, beam_search, greedy_decode
from vlp.text.locations import ids_to_box, location_ids

# ----------------------------------------------------------------------------- the cached step


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dh)


def init_cache(model: Any, context: VisualTokens) -> dict[str, Any]:
    """The decoder's cache for ``context``: cross-attention keys / values per layer and empty self-attention ones."""
    layers = model.decoder.layers
    rows = context.tokens.shape[0]
    cache: dict[str, Any] = {"k": [], "v": [], "ck": [], "cv": []}
    bias = attention_bias(context.mask, False, 1, context.mask.shape[1], context.tokens.dtype, context.tokens.device)
    cache["bias"] = bias
    for layer in layers:
        heads, dim = layer.attn.heads, layer.attn.out.in_features
        empty = context.tokens.new_zeros(rows, heads, 0, dim // heads)
        cache["k"].append(empty)
        cache["v"].append(empty)
        if layer.cross_attn is None:
            raise ValueError("seq2seq decoding: every decoder layer must cross-attend (cross_attention_from: 0)")
        k, v = layer.cross_attn.kv(context.tokens).chunk(2, dim=-1)
        cache["ck"].append(_heads(k, heads))
        cache["cv"].append(_heads(v, heads))
    return cache


def _block_step(layer: Any, x: torch.Tensor, i: int, cache: dict[str, Any]) -> torch.Tensor:
    """One :class:`~vlp.layers.TransformerBlock` on new tokens ``x`` ``(B, 1, D)`` with the cache of layer ``i``."""
    heads = layer.attn.heads

    def self_attention(h: torch.Tensor) -> torch.Tensor:
        q, k, v = (_heads(t, heads) for t in layer.attn.qkv(h).chunk(3, dim=-1))
        cache["k"][i] = torch.cat([cache["k"][i], k], 2)
        cache["v"][i] = torch.cat([cache["v"][i], v], 2)
        # one new query sees every cached key: the causal mask of a full pass, with nothing in the future
        return layer.attn.out(_merge(F.scaled_dot_product_attention(q, cache["k"][i], cache["v"][i])))

    def cross_attention(h: torch.Tensor) -> torch.Tensor:
        q = _heads(layer.cross_attn.q(h), heads)
        out = F.scaled_dot_product_attention(q, cache["ck"][i], cache["cv"][i], attn_mask=cache["bias"])
        return layer.cross_attn.out(_merge(out))

    x = layer._residual(x, layer.norm1, self_attention, layer.ls1)
    x = layer._residual(x, layer.norm_cross, cross_attention)
    if layer.norm_first:
        branch = layer.mlp(layer.norm2(x))
        return x + (layer.ls2(branch) if layer.ls2 is not None else branch)
    branch = layer.mlp(x)
    return layer.norm2(x + (layer.ls2(branch) if layer.ls2 is not None else branch))


def cached_logits(model: Any, tokens: torch.Tensor, cache: dict[str, Any]) -> torch.Tensor:
    """Feed the tokens of ``tokens`` ``(B, T)`` that the cache has not seen yet, one at a time; returns the
    next-token logits ``(B, V)`` after the last one. ``cache`` (from :func:`init_cache`) is updated in place."""
    decoder = model.decoder
    seen = cache["k"][0].shape[2]
    if tokens.shape[1] <= seen:
        raise ValueError(f"cached_logits: {tokens.shape[1]} tokens, but the cache already holds {seen}")
    for position in range(seen, tokens.shape[1]):
        x = decoder.embeddings(tokens[:, position : position + 1], None, torch.tensor([position], device=tokens.device))
        for i, layer in enumerate(decoder.layers):
            x = _block_step(layer, x, i, cache)
        x = decoder.final_norm(x)
    return model.heads["lm"](x)[:, -1]


# ----------------------------------------------------------------------------- constrained generation


def _special_ban(tokenizer: Any) -> list[int]:
    return [tokenizer.pad_id, tokenizer.cls_id, tokenizer.mask_id]


def answer_trie(tokenizer: Any, answers: list[str]) -> dict[tuple[int, ...], set[int]]:
    """prefix of answer ids -> the ids that may follow it (an answer's last id is followed by [SEP])."""
    trie: dict[tuple[int, ...], set[int]] = {}
    for answer in answers:
        ids = tokenizer([answer], max_length=64).input_ids[0]
        ids = [int(i) for i in ids[1:] if int(i) != tokenizer.pad_id]  # drop [CLS]; ends with [SEP]
        for k in range(len(ids)):
            trie.setdefault(tuple(ids[:k]), set()).add(ids[k])
    return trie


def generate(
    model: Any,
    tokenizer: Any,
    context: VisualTokens,
    options: DecodeOptions,
    *,
    kind: str = "text",
    trie: dict[tuple[int, ...], set[int]] | None = None,
) -> torch.Tensor:
    """Generated ids ``(B, G)`` after the ``[CLS]`` prompt, from the encoder output ``context``.

    ``kind``: ``text`` (no location tokens; ``trie`` restricts to an answer list) or ``box`` (exactly
    four location tokens, no end token).
    """
    if kind not in ("text", "box"):
        raise ValueError(f"kind={kind!r}: expected 'text' or 'box'")
    try:
        bins = location_ids(tokenizer)
    except ValueError:
        if kind == "box":
            raise
        bins = torch.zeros(0, dtype=torch.long)  # a caption-only model: nothing to ban
    rows = context.tokens.shape[0]
    device = context.tokens.device
    vocab = model.decoder.embeddings.word.num_embeddings
    allowed_box = torch.zeros(vocab, dtype=torch.bool, device=device)
    allowed_box[bins.to(device)] = True
    banned_text = torch.zeros(vocab, dtype=torch.bool, device=device)
    banned_text[bins.to(device)] = True
    banned_text[_special_ban(tokenizer)] = True
    banned_text[tokenizer.vocab_size :] = True

    def step(tokens: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = cached_logits(model, tokens, state).float()
        if kind == "box":
            return logits.masked_fill(~allowed_box, float("-inf")), state
        logits = logits.masked_fill(banned_text, float("-inf"))
        if trie is not None:
            keep = torch.zeros_like(logits, dtype=torch.bool)
            for r, row in enumerate(tokens[:, 1:].tolist()):
                prefix = tuple(row[: row.index(tokenizer.sep_id)] if tokenizer.sep_id in row else row)
                nxt = trie.get(prefix) or {tokenizer.sep_id}
                keep[r, list(nxt)] = True
            logits = logits.masked_fill(~keep, float("-inf"))
        return logits, state

    prompt = torch.full((rows, 1), tokenizer.cls_id, dtype=torch.long, device=device)
    box = kind == "box"
    common = {
        "max_new_tokens": 4 if box else options.max_new_tokens, "eos_token_id": None if box else tokenizer.sep_id,
        "pad_token_id": tokenizer.pad_id, "min_new_tokens": 0 if box else options.min_new_tokens,
        "repetition_penalty": 1.0 if box else options.repetition_penalty, "state": init_cache(model, context),
    }  # fmt: skip
    with torch.no_grad():
        if options.strategy == "beam" and options.num_beams > 1:
            out = beam_search(step, prompt, num_beams=options.num_beams, length_penalty=options.length_penalty,
                              **common)  # fmt: skip
        else:
            out = greedy_decode(step, prompt, **common)
    return out.new_tokens


@torch.no_grad()
def encode(model: Any, batch: Any) -> VisualTokens:
    """The encoder output of a :class:`~vlp.data.batch.Batch` (instruction ids + images)."""
    ids, mask, types = model.text_inputs(batch)
    return encoder_context(model, ids, mask.bool(), model.image_tokens(batch), types)


def generate_text(model: Any, tokenizer: Any, batch: Any, options: DecodeOptions, answers: list[str] | None = None
                  ) -> list[str]:  # fmt: skip
    """Captions or answers for a batch of instructions; ``answers`` restricts them to that list."""
    trie = answer_trie(tokenizer, answers) if answers else None
    ids = generate(model, tokenizer, encode(model, batch), options, kind="text", trie=trie)
    return [text.strip() for text in tokenizer.batch_decode(ids.cpu())]


def generate_boxes(model: Any, tokenizer: Any, batch: Any, options: DecodeOptions) -> torch.Tensor:
    """Normalized xyxy boxes ``(B, 4)`` for a batch of referring-expression instructions."""
    ids = generate(model, tokenizer, encode(model, batch), options, kind="box")
    return ids_to_box(ids.cpu(), location_ids(tokenizer))


__all__ = ["answer_trie", "cached_logits", "encode", "generate", "generate_boxes", "generate_text", "init_cache"]
