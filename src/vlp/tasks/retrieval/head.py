"""Image-text retrieval: fine-tuning, evaluation (R@1/5/10 both ways, RSUM) and ``retrieve``.

Scoring modes (``mode``):

- ``dual``: dual encoders (CLIP; the dual side of ALBEF/BLIP/VLMo) score every pair by the dot
  product of precomputed, L2-normalized embeddings.
- ``two_stage`` (ALBEF/BLIP evaluation): the dual-side similarity shortlists the top ``k`` texts
  of each image and the top ``k`` images of each text; only those pairs are re-scored by the
  fusion encoder's ITM head (the logit of "match"). Pairs outside a shortlist score ``-inf``.
  ``add_itc`` adds the ITC similarity to the ITM score, as BLIP does.
- ``exhaustive``: the fusion encoder scores every pair, in batches of ``pair_batch_size``
  pairs: the only option for single-stream models without a dual side (ViLT, UNITER).
- ``auto``: ``dual`` without fusion, ``two_stage`` with fusion and a dual side, else ``exhaustive``.

The pairwise scorer uses the ``itm`` head, or ViLT's ``rank`` head when the model has no ``itm``.
Unimodal visual and text tokens are computed once per image / caption and cached, so a pair
costs only its fusion pass (OSCAR's tags make the text side image-dependent, so with
``use_tags`` the text tokens are computed per pair).

Metrics follow the Karpathy protocol (several captions per image; see
:func:`vlp.metrics.retrieval_metrics`); ``chance`` gives what a random ranking scores in
expectation: t2i R@K = K / N_images, i2t R@K = mean over images of the probability that at
least one of its c captions lands in a random top K of N_texts (hypergeometric).

Fine-tuning for retrieval is ITC + ITM on caption pairs (:class:`vlp.objectives.Pretraining`);
the ``task:`` section may name other ``objectives``. By default: ``itc`` for dual encoders,
``itc`` + ``itm`` (hard negatives) for fusion models with a dual side, ``itm`` (random
negatives) for fusion-only models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlp.config import ConfigError, from_dict

MODES = ("auto", "dual", "two_stage", "exhaustive")


@dataclass
class RetrievalTask:
    """The ``task:`` section of a retrieval recipe."""

    type: str = "retrieval"
    objectives: dict[str, dict[str, Any]] = field(default_factory=dict)  # empty = chosen from the model's parts


def default_objectives(model: Any) -> dict[str, dict[str, Any]]:
    """ITC and/or ITM, as the model's parts allow (see the module docstring)."""
    from vlp.tasks.common import has_dual, has_fusion

    fusion, dual, itm = has_fusion(model), has_dual(model), "itm" in getattr(model, "heads", {})
    if fusion and not itm:
        raise ConfigError("task: retrieval fine-tuning of a fusion model needs an itm head (model.heads.itm: {})")
    if dual and fusion:
        return {"itc": {"weight": 1.0}, "itm": {"weight": 1.0, "negatives": "hard"}}
    if dual:
        return {"itc": {"weight": 1.0}}
    if fusion:
        return {"itm": {"weight": 1.0, "negatives": "random"}}
    raise ConfigError("task: retrieval needs a dual-encoder side (model.embed_dim) or a fusion module with itm")


def build_finetuning(
    task: dict[str, Any], recipe: Any, model: Any, tokenizer: Any, *, rank: int = 0, world_size: int = 1
) -> tuple[Any, Any]:
    """``(Pretraining(model, ITC/ITM), caption-pair train loader)`` for ``vlp finetune``."""
    import torch

    from vlp.data import build_loader
    from vlp.objectives import Pretraining, validate_objectives

    opts = from_dict(RetrievalTask, task, "task")
    objectives = validate_objectives(opts.objectives or default_objectives(model))
    module = Pretraining(model, objectives, tokenizer=tokenizer)
    loader = build_loader(
        recipe.data, "train", tokenizer, recipe.train.batch_size, num_workers=recipe.train.num_workers,
        rank=rank, world_size=world_size, pin_memory=torch.cuda.is_available(),
    )  # fmt: skip
    return module, loader


# ----------------------------------------------------------------------------- encoding


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


def _pad_cat(parts: list[Any], value: float | bool = 0) -> Any:
    """Concatenate ``(B_k, L_k, ...)`` tensors along dim 0, right-padding dim 1 to the longest."""
    import torch
    import torch.nn.functional as F

    width = max(p.shape[1] for p in parts)
    padded = [F.pad(p, [0, 0] * (p.dim() - 2) + [0, width - p.shape[1]], value=value) for p in parts]
    return torch.cat(padded)


def _resolve_mode(model: Any, mode: str) -> str:
    from vlp.tasks.common import has_dual, has_fusion

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
    import torch

    out = Encoded()
    with torch.no_grad():
        _encode_images(model, image_batches, mode, device, out)
        _encode_texts(model, texts, tokenizer, mode, device, max_text_len, text_batch_size, out)
    return out


def _encode_images(model: Any, image_batches: Any, mode: str, device: Any, out: Encoded) -> None:
    import torch

    from vlp.core.outputs import VisualTokens

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
    import torch

    from vlp.data.batch import Batch

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


def pair_scorer(model: Any, encoded: Encoded, device: Any) -> Any:
    """``score_fn(image_idx (P,), text_idx (P,)) -> (P,)``: the fusion encoder's match score of each pair."""
    import torch

    from vlp.core.outputs import VisualTokens

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
    """Score every (image, text) pair the way ``mode`` says (see the module docstring)."""
    from vlp.tasks.retrieval_search import exhaustive, rerank, similarity_matrix

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


def chance_recall(img2txt: list[list[int]], n_texts: int, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Expected R@K (percent) of a uniformly random ranking, both directions, and their RSUM."""
    n_images = len(img2txt)
    out: dict[str, float] = {}
    for k in ks:
        hits = 0.0
        for caps in img2txt:
            miss = 1.0  # P(none of the c captions in a random top k of n_texts)
            for j in range(min(k, n_texts)):
                miss *= max(n_texts - len(caps) - j, 0) / (n_texts - j)
            hits += 1.0 - miss
        out[f"i2t_r{k}"] = 100.0 * hits / n_images
    for k in ks:
        out[f"t2i_r{k}"] = 100.0 * min(k, n_images) / n_images
    out["rsum"] = sum(out[f"i2t_r{k}"] + out[f"t2i_r{k}"] for k in ks)
    return out


def evaluate(
    model: Any,
    tokenizer: Any,
    data: Any,
    *,
    split: str = "test",
    mode: str = "auto",
    k: int = 16,
    add_itc: bool = False,
    batch_size: int = 64,
    pair_batch_size: int = 256,
    device: Any = None,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Retrieval metrics of ``model`` on ``data``.

    ``data``: a :class:`~vlp.data.config.DataConfig` (its ``split`` is read one record per image)
    or a dataset with ``texts``, ``txt2img``, ``img2txt`` and image samples carrying
    ``image_index`` (e.g. a :class:`~vlp.data.dataset.VLDataset` in ``images`` mode).

    Returns ``i2t_r1/5/10``, ``t2i_r1/5/10``, means, ``rsum`` (percent), ``mode``, ``k``,
    ``num_pairs`` (fusion passes), ``n_images``, ``n_texts`` and ``chance`` (same keys).
    """
    from vlp.data.config import DataConfig
    from vlp.metrics import retrieval_metrics
    from vlp.tasks.common import build_eval_dataset, iterate_batches, model_data_config

    device = device if device is not None else next(model.parameters()).device
    dataset = build_eval_dataset(data, split, tokenizer) if isinstance(data, DataConfig) else data
    if getattr(dataset, "texts", None) is None or getattr(dataset, "txt2img", None) is None:
        raise ConfigError("retrieval: the data must be indexed one record per image with texts (options.mode: images)")
    texts, txt2img = list(dataset.texts), list(dataset.txt2img)
    img2txt = dataset.img2txt
    mode = _resolve_mode(model, mode)
    max_len = data.max_text_len if isinstance(data, DataConfig) else model_data_config(model).max_text_len
    # the tokenizer only encodes object tags here (OSCAR); images-mode samples carry no text. An
    # unreadable image is skipped by the loader and then refused by encode(): recall needs them all.
    images = iterate_batches(dataset, tokenizer, batch_size, max_len, num_workers=num_workers)
    was_training = model.training
    model.eval()
    try:
        encoded = encode(model, images, texts, tokenizer, mode=mode, device=device, max_text_len=max_len,
                         text_batch_size=batch_size)  # fmt: skip
        scores = score_matrices(model, encoded, mode, k=k, add_itc=add_itc, pair_batch_size=pair_batch_size,
                                device=device)  # fmt: skip
    finally:
        model.train(was_training)
    metrics: dict[str, Any] = retrieval_metrics(scores.i2t, txt2img, img2txt, sim_t2i=scores.t2i)
    img2txt = img2txt or [[t for t, i in enumerate(txt2img) if i == n] for n in range(scores.i2t.shape[0])]
    metrics.update(mode=mode, num_pairs=scores.num_pairs, n_images=len(img2txt), n_texts=len(texts))
    if mode == "two_stage":
        metrics["k"] = k
    metrics["chance"] = chance_recall(img2txt, len(texts))
    return metrics


# ----------------------------------------------------------------------------- predict


@dataclass
class RetrievalPrediction:
    """Top-k both ways: ``i2t`` ``(N_i, k)`` text indices per image and ``t2i`` ``(N_t, k)`` image
    indices per text, best first, with their scores (long / float tensors)."""

    i2t: Any
    t2i: Any
    i2t_scores: Any
    t2i_scores: Any


def retrieve(
    model: Any,
    tokenizer: Any,
    images: list[Any],
    texts: list[str],
    k: int = 5,
    *,
    mode: str = "auto",
    rerank_k: int = 16,
    add_itc: bool = False,
    device: Any = None,
) -> RetrievalPrediction:
    """Rank ``texts`` for every image and ``images`` for every text (PIL images or paths).

    ``k`` results per query (capped at the number of candidates); ``mode`` and ``rerank_k`` (the
    two-stage shortlist) as in :func:`evaluate`.
    """
    import torch

    from vlp.tasks.common import check_texts, image_batch, model_data_config

    texts = check_texts(texts)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    device = device if device is not None else next(model.parameters()).device
    mode = _resolve_mode(model, mode)
    batch = image_batch(model, images)
    max_len = model_data_config(model).max_text_len
    was_training = model.training
    model.eval()
    try:
        encoded = encode(model, [batch], texts, tokenizer, mode=mode, device=device, max_text_len=max_len)
        scores = score_matrices(model, encoded, mode, k=max(k, rerank_k), add_itc=add_itc, device=device)
    finally:
        model.train(was_training)
    i2t = scores.i2t.topk(min(k, scores.i2t.shape[1]), dim=1)
    t2i = scores.t2i.T.topk(min(k, scores.t2i.shape[0]), dim=1)
    return RetrievalPrediction(i2t.indices, t2i.indices, i2t.values.to(torch.float32), t2i.values.to(torch.float32))


predict = retrieve


# ----------------------------------------------------------------------------- vlp eval retrieval


__all__ = [
    "Encoded",
    "RetrievalPrediction",
    "RetrievalTask",
    "ScoreMatrices",
    "build_finetuning",
    "chance_recall",
    "default_objectives",
    "encode",
    "evaluate",
    "pair_scorer",
    "predict",
    "retrieve",
    "score_matrices",
]
