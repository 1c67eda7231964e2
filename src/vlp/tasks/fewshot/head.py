"""The learned parts of few-shot adaptation on frozen towers: CoOp's context vectors (unified or class-specific)
and CLIP-Adapter's residual bottleneck MLP on the image embedding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError
from vlp.tasks.common import has_dual

CTX_STD = 0.02  # CoOp's random initialisation of the context vectors: N(0, 0.02^2)


def check_prompt_model(model: Any) -> None:
    """A ConfigError unless the model's dual-encoder text side can run from word vectors (CoOp needs that)."""
    if not has_dual(model):
        raise ConfigError("prompt learning needs a dual-encoder side (model.embed_dim > 0, e.g. CLIP)")
    text = getattr(model, "text", None)
    if getattr(model, "towers_in_fusion", False) or not all(
        hasattr(text, name) for name in ("embeddings", "forward_layers", "pool")
    ):
        raise ConfigError(
            f"CoOp: model {model.cfg.name!r} has no text encoder that runs from word vectors (a BERT-family "
            "text tower outside the fusion module, as CLIP, ALBEF and BLIP have); use the adapter instead"
        )


def text_embeddings_from_words(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    words: torch.Tensor,
) -> torch.Tensor:
    """``(B, E)`` normalized dual-encoder text embeddings of prompts whose word vectors are ``words`` (B, L, D).

    The same pass as ``model.encode_text`` (the unimodal text layers, the tower's pooling, ``text_proj``) except
    that the word-embedding lookup is replaced by ``words``; ``input_ids`` still decide the pooled position.
    """
    check_prompt_model(model)
    end = model.fusion.unimodal_text_layers() if model.fusion is not None else None
    hidden = model.text.embeddings(input_ids, token_type_ids, inputs_embeds=words)
    tokens = model.text.forward_layers(hidden, attention_mask, 0, end)
    pooled = model.text.pool(tokens, input_ids, attention_mask)
    return F.normalize(model.text_proj(pooled), dim=-1)


class CoOpPrompts(nn.Module):
    """CoOp (Zhou et al., 2022): the prompt ``[V1] .. [VM] CLASSNAME.`` with M learned context vectors.

    ``class_specific=False`` (unified): one ``(M, D)`` context shared by all classes; True (CSC): ``(C, M, D)``.
    ``init`` (e.g. "a photo of a"): the context starts as that phrase's word embeddings and M is its token count;
    otherwise M = ``n_ctx`` vectors drawn from N(0, 0.02^2) with ``generator``. The context goes right after the
    start token, the class name (and its full stop) at the end. :meth:`forward` returns the ``(C, E)`` class
    embeddings; the model is an argument, never a submodule, so ``parameters()`` holds only the context.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        class_names: Sequence[str],
        n_ctx: int | None = 16,
        init: str | None = None,
        class_specific: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_prompt_model(model)
        names = list(class_names)
        if not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise ConfigError("CoOp: class_names must be a non-empty list of non-empty strings")
        embeddings = model.text.embeddings
        max_len = embeddings.max_positions
        phrase = init.strip() if init else " ".join(["X"] * int(n_ctx or 0))
        phrase_tok = tokenizer([phrase], max_length=max_len, padding="longest")
        count = int(phrase_tok.attention_mask.sum()) - 2  # without the start and end tokens
        if init and n_ctx is not None and n_ctx != count:
            raise ConfigError(f"CoOp: n_ctx={n_ctx} but the init phrase {init!r} is {count} tokens; they must agree")
        if count < 1:
            raise ConfigError(f"CoOp: n_ctx must be >= 1 (got {n_ctx}, init {init!r})")
        tok = tokenizer([f"{phrase} {name}." for name in names], max_length=max_len, padding="longest")
        ids, mask = tok.input_ids, tok.attention_mask.bool()
        slots = phrase_tok.input_ids[0, 1 : 1 + count]
        for name, row, kept in zip(names, ids, mask):
            if not torch.equal(row[1 : 1 + count], slots) or int(kept.sum()) >= max_len:
                raise ConfigError(
                    f"CoOp: the prompt of class {name!r} does not tokenize as start + {count} context tokens + "
                    f"name + end within the text tower's {max_len} positions; shorten the name or n_ctx"
                )
        self.n_ctx, self.class_specific, self.init = count, class_specific, init
        self.class_names = names
        weight = embeddings.word.weight
        # the token tensors live with the context on the tower's device (buffers: ``.to()`` moves them together)
        self.register_buffer("input_ids", ids.to(weight.device), persistent=False)
        self.register_buffer("attention_mask", mask.to(weight.device), persistent=False)
        types = tok.token_type_ids
        self.register_buffer("token_type_ids", None if types is None else types.to(weight.device), persistent=False)
        if init:
            ctx = weight[slots.to(weight.device)].detach().clone().float()
        else:
            ctx = torch.randn(count, weight.shape[1], generator=generator) * CTX_STD
        if class_specific:
            ctx = ctx.unsqueeze(0).repeat(len(names), 1, 1)
        self.ctx = nn.Parameter(ctx.to(weight.device, weight.dtype))

    def words(self, model: Any) -> torch.Tensor:
        """``(C, L, D)`` word vectors of the prompts: the frozen token embeddings with the context in its slots."""
        frozen = model.text.embeddings.word(self.input_ids)
        num, dim = frozen.shape[0], frozen.shape[2]
        ctx = self.ctx if self.class_specific else self.ctx.unsqueeze(0).expand(num, self.n_ctx, dim)
        return torch.cat([frozen[:, :1], ctx.to(frozen.dtype), frozen[:, 1 + self.n_ctx :]], dim=1)

    def forward(self, model: Any) -> torch.Tensor:
        """``(C, E)`` normalized class embeddings of the learned prompts (gradients flow to the context only
        when the model's parameters are frozen)."""
        return text_embeddings_from_words(model, self.input_ids, self.attention_mask, self.token_type_ids,
                                          self.words(model))  # fmt: skip


class ClipAdapter(nn.Module):
    """CLIP-Adapter (Gao et al., 2021) on the image embedding: ``f' = alpha * A(f) + (1 - alpha) * f``, with
    ``A`` = Linear(E, E / reduction) -> ReLU -> Linear(E / reduction, E) -> ReLU (no biases), then L2-normalized;
    the text classifier (template prompts) stays frozen. ``alpha = 0`` is the frozen model exactly."""

    def __init__(self, dim: int, reduction: int = 4, alpha: float = 0.2) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"adapter: alpha={alpha} must lie in [0, 1]")
        if reduction < 1 or dim // reduction < 1:
            raise ConfigError(f"adapter: reduction={reduction} must be >= 1 and leave a bottleneck of >= 1 of {dim}")
        hidden = dim // reduction
        self.alpha = alpha
        self.fc = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(),
                                nn.Linear(hidden, dim, bias=False), nn.ReLU())  # fmt: skip

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, E)`` image embeddings -> ``(N, E)`` adapted, L2-normalized embeddings."""
        return F.normalize(self.alpha * self.fc(features) + (1.0 - self.alpha) * features, dim=-1)
