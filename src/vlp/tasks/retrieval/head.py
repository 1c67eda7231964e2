"""Retrieval scoring: the unimodal encodings cached once, the fusion encoder's pair scorer (``itm`` or
ViLT's ``rank`` head) and the ``(N_i, N_t)`` score matrices of each scoring mode.

Modes (see :mod:`vlp.tasks.retrieval`): ``dual`` (dot products of the dual-encoder embeddings),
``two_stage`` (a dual-side shortlist re-scored by the fusion encoder), ``exhaustive`` (the fusion
encoder on every pair) and ``auto`` (chosen from the model's parts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vlp.config import ConfigError
from vlp.core.outputs import VisualTokens
from vlp.data.batch import Batch
from vlp.tasks.common import has_dual, has_fusion
from vlp.tasks.retrieval.search import exhaustive, rerank, similarity_matrix

MODES = ("auto", "dual", "two_stage", "exhaustive")


@dataclass
class Encoded:
    """Cached unimodal results. Embeddings ``(N, E)`` (dual side) or None; visual tokens
    ``(N_i, T, D)`` + mask, text tokens ``(N_t, L, D)`` + mask (or the raw ids when tags make the
    text side pair-dependent); ``tags``: the images' tag ids + mask (OSCAR), else None. All on CPU."""

    image_embed: Any = None
    text_embed: Any = None
    image_tokens: Any = None
    text_tokens: Any = None
    text_ids: Any = None
    tags: Any = None


def _pad_cat(parts: list[torch.Tensor], value: float | bool = 0) -> torch.Tensor:
    """Concatenate ``(B_k, L_k, ...)`` tensors along dim 0, right-padding dim 1 to the longest."""
    width = max(p.shape[1] for p in parts)
    padded = [F.pad(p, [0, 0] * (p.dim() - 2) + [0, width - p.shape[1]], value=value) for p in parts]
    return torch.cat(padded)


def resolve_mode(model: Any, mode: str) -> str:
    """The scoring mode to run: ``auto`` chosen from the model's parts, any other one checked against them."""
    if mode not in MODES:
        raise ConfigError(f"retrieval mode: {mode!r} is not one of {', '.join(MODES)}")
    fusion, dual = has_fusion(model), has_dual(model)
    if mode == "auto":
        return "dual" if not fusion else "two_stage" if dual else "exhaustive"
    if mode in ("dual", "two_stage") and not dual:
        raise ConfigError(f"retrieval mode {mode}: the model has no dual-encoder side (model.embed_dim is 0)")
    if mode in ("two_stage", "exhaustive") and not fusion:
        raise ConfigError(f"retrieval mode {mode}: the model has no fusion module (a dual encoder): use mode dual")
    return mode


def _score_head(model: Any) -> str:
    heads = getattr(model, "heads", {})
    if "itm" in heads:
        return "itm"
    if "rank" in heads:
        return "rank"
    raise ConfigError("retrieval with the fusion encoder needs an itm (or rank) head: model.heads.itm: {}")


def encode(model: Any, image_batches: Any, texts: list[str], tokenizer: Any, *, mode: str, device: Any,
           max_text_len: int = 40, text_batch_size: int = 64) -> Encoded:  # fmt: skip
    """Run the unimodal encoders once over every image batch and every caption (no gradients)."""
    out = Encoded()
    with torch.no_grad():
        _encode_images(model, image_batches, mode, device, out)
        _encode_texts(model, texts, tokenizer, mode, device, max_text_len, text_batch_size, out)
    return out


def _encode_images(model: Any, image_batches: Any, mode: str, device: Any, out: Encoded) -> None:
    use_tags = bool(getattr(model.cfg, "use_tags", False))
    embeds, tokens, masks, tag_ids, tag_masks, order = [], [], [], [], [], []
    for batch in image_batches:
        result = model(batch.to(device))  # images-mode batches hold no caption: only the vision side runs
        if mode != "exhaustive":
            embeds.append(result.image_embed.float().cpu())
        if mode != "dual":
            tokens.append(result.image.tokens.cpu())
            masks.append(result.image.mask.cpu())
            if use_tags:
                if batch.tag_ids is None:
                    raise ConfigError("model.use_tags: the evaluation data has no object tags (regions with tags)")
                tag_ids.append(batch.tag_ids)
                tag_masks.append(batch.tag_mask)
        known = batch.image_index is not None
        order.append(batch.image_index if known else torch.tensor([m["index"] for m in batch.meta]))
    if not order:
        raise ConfigError("retrieval: the evaluation data yielded no images")
    if not torch.equal(torch.cat(order), torch.arange(sum(len(o) for o in order))):
        raise ConfigError("retrieval: images are missing or out of order (was an image file unreadable?)")
    if embeds:
        out.image_embed = torch.cat(embeds)
    if tokens:
        out.image_tokens = VisualTokens(_pad_cat(tokens), _pad_cat(masks, False))
    if tag_ids:
        out.tags = (_pad_cat(tag_ids, 0), _pad_cat(tag_masks, False))


def _encode_texts(model: Any, texts: list[str], tokenizer: Any, mode: str, device: Any, max_len: int,
                  batch_size: int, out: Encoded) -> None:  # fmt: skip
    use_tags = bool(getattr(model.cfg, "use_tags", False))
    embeds, tokens, masks, ids, types = [], [], [], [], []
    for start in range(0, len(texts), batch_size):
        tok = tokenizer(texts[start : start + batch_size], max_length=max_len)
        mask = tok.attention_mask.bool()
        per_pair = use_tags and mode != "dual"
        if per_pair:  # OSCAR: the text side depends on the image's tags; keep the ids, encode per pair
            ids.append(tok.input_ids)
            types.append(tok.token_type_ids)
            masks.append(mask)
        if mode != "exhaustive" or not per_pair:  # embeddings, and/or text tokens to cache
            batch = Batch(input_ids=tok.input_ids, attention_mask=mask, token_type_ids=tok.token_type_ids)
            result = model(batch.to(device))
            if mode != "exhaustive":
                embeds.append(result.text_embed.float().cpu())
            if mode != "dual" and not per_pair:
                tokens.append(result.text.cpu())
                masks.append(result.text_mask.cpu())
    if embeds:
        out.text_embed = torch.cat(embeds)
    if ids:
        out.text_ids = (_pad_cat(ids, tokenizer.pad_id), _pad_cat(masks, False), _pad_cat(types, 0))
    elif tokens:
        out.text_tokens = (_pad_cat(tokens), _pad_cat(masks, False))


def pair_scorer(model: Any, encoded: Encoded, device: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``score_fn(image_idx (P,), text_idx (P,)) -> (P,)``: the fusion encoder's match score of each pair."""
    head = _score_head(model)
    vis = encoded.image_tokens

    @torch.no_grad()
    def score(image_idx: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
        image = VisualTokens(vis.tokens[image_idx].to(device), vis.mask[image_idx].to(device))
        if encoded.text_ids is not None:  # OSCAR: caption + the image's tags
            ids, mask, types = (t[text_idx].to(device) for t in encoded.text_ids)
            tags, tag_mask = (t[image_idx].to(device) for t in encoded.tags)
            ids, mask, types = model.join_tags(ids, mask, types, tags, tag_mask)
            text = model.text_tokens(ids, mask, types)
        else:
            text, mask = (t[text_idx].to(device) for t in encoded.text_tokens)
        logits = model.heads[head](model.fuse(text, mask, image).pooled).float()
        return logits[:, 1] if head == "itm" else logits[:, 0]  # ALBEF/BLIP rank by the "match" logit

    return score


@dataclass
class ScoreMatrices:
    """``i2t`` and ``t2i`` scores ``(N_i, N_t)`` (equal except in two-stage mode) and the cost."""

    i2t: Any
    t2i: Any
    mode: str
    num_pairs: int  # pairs scored by the fusion encoder (0 in dual mode)


def score_matrices(model: Any, encoded: Encoded, mode: str, *, k: int = 16, add_itc: bool = False,
                   pair_batch_size: int = 256, device: Any = "cpu") -> ScoreMatrices:  # fmt: skip
    """Score every (image, text) pair the way ``mode`` says (see :mod:`vlp.tasks.retrieval`)."""
    if mode == "dual":
        sim = similarity_matrix(encoded.image_embed, encoded.text_embed)
        return ScoreMatrices(sim, sim, mode, 0)
    scorer = pair_scorer(model, encoded, device)
    if mode == "two_stage":
        sim = similarity_matrix(encoded.image_embed, encoded.text_embed)
        result = rerank(sim, scorer, k, batch_size=pair_batch_size, add_itc=add_itc)
        return ScoreMatrices(result.i2t, result.t2i, mode, result.num_pairs)
    n_images, n_texts = encoded.image_tokens.tokens.shape[0], _num_texts(encoded)
    scores = exhaustive(scorer, n_images, n_texts, batch_size=pair_batch_size)
    return ScoreMatrices(scores, scores, mode, n_images * n_texts)


def _num_texts(encoded: Encoded) -> int:
    return (encoded.text_ids or encoded.text_tokens)[0].shape[0]
