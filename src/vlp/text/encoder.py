"""BERT-family text encoder: embeddings + a stack of transformer blocks, with optional cross-attention.

One module covers the text towers of the survey's models: BERT (post-norm,
``[CLS]`` pooling), CLIP's text transformer (pre-norm, causal, final LayerNorm,
``eos`` pooling) and the ALBEF/BLIP text encoder whose upper layers carry
cross-attention to image tokens (``cross_attention_from``), so that the same
stack serves as text encoder (lower layers) and fusion encoder (upper layers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vlp.config import part
from vlp.layers import TransformerBlock, activation, masked_mean
from vlp.layers.attention import blocked_bias
from vlp.layers.block import run_layer, stack_bias
from vlp.text.config import TextConfig
from vlp.text.embeddings import TextEmbeddings


class BertTextEncoder(nn.Module):
    """Text encoder built from :class:`vlp.layers.TransformerBlock` (batch-first, bool keep-masks).

    ``forward(input_ids (B, L) long, attention_mask (B, L) bool (True = real token), token_type_ids,
    context (B, N, Dc) image tokens, context_mask (B, N) bool) -> (B, L, D)``.

    Submodules: ``embeddings`` (:class:`TextEmbeddings`), ``layers`` (``nn.ModuleList`` of
    ``TransformerBlock``; layer ``i`` has cross-attention when ``0 <= cross_attention_from <= i``)
    and ``final_norm`` (LayerNorm for pre-norm towers, else identity).
    """

    def __init__(self, cfg: BertTextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = TextEmbeddings(
            cfg.vocab_size,
            cfg.dim,
            cfg.max_positions,
            cfg.type_vocab_size,
            dropout=cfg.dropout,
            eps=cfg.eps,
            norm=cfg.embed_norm,
        )
        attn_dropout = cfg.dropout if cfg.attn_dropout is None else cfg.attn_dropout
        self.layers = nn.ModuleList(
            TransformerBlock(
                cfg.dim,
                cfg.heads,
                cfg.mlp_dim,
                norm_first=cfg.norm_first,
                act=cfg.act,
                dropout=cfg.dropout,
                attn_dropout=attn_dropout,
                eps=cfg.eps,
                cross_attention=0 <= cfg.cross_attention_from <= i,
                context_dim=cfg.context_dim,
                layer_scale=cfg.layer_scale,
            )
            for i in range(cfg.layers)
        )
        self.final_norm = nn.LayerNorm(cfg.dim, eps=cfg.eps) if cfg.final_norm else nn.Identity()
        self.grad_checkpointing = False
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # BERT's initialization: N(0, 0.02) weights, zero biases, unit LayerNorm.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.cfg.init_std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def dim(self) -> int:
        return self.cfg.dim

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer in the backward pass (less memory, ~30% more compute)."""
        self.grad_checkpointing = enable

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        causal: bool | None = None,
        start_layer: int = 0,
        end_layer: int | None = None,
        return_all: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Embed ``input_ids`` (B, L) and run layers ``[start_layer, end_layer)`` -> (B, L, D).

        With ``start_layer > 0`` the first argument must instead be the hidden states
        ``(B, L, D)`` that an earlier call with ``end_layer=start_layer`` returned (ALBEF
        runs layers 0-5 as the text encoder, then 6-11 with image ``context`` as the
        fusion encoder); :meth:`forward_layers` is the explicit form of that call.
        ``causal=None`` uses ``cfg.causal``. ``return_all`` also returns the output of
        every layer that ran.
        """
        if start_layer == 0:
            if input_ids.is_floating_point():
                raise ValueError(
                    "forward(start_layer=0) embeds token ids, got float hidden states; to continue from hidden "
                    "states pass start_layer=k or call forward_layers(hidden, ..., start=k)"
                )
            hidden = self.embeddings(input_ids, token_type_ids)
        else:
            if not input_ids.is_floating_point() or input_ids.dim() != 3:
                raise ValueError(
                    f"forward(start_layer={start_layer}) continues from hidden states (B, L, {self.dim}) returned by "
                    f"forward(..., end_layer={start_layer}); got {input_ids.dtype} {tuple(input_ids.shape)}"
                )
            if token_type_ids is not None:
                raise ValueError(
                    f"token_type_ids are only used by the embeddings; start_layer={start_layer} skips them"
                )
            hidden = input_ids
        return self.forward_layers(
            hidden, attention_mask, start_layer, end_layer, context, context_mask, causal, return_all=return_all
        )

    def forward_layers(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        start: int = 0,
        end: int | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        causal: bool | None = None,
        return_all: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Run layers ``[start, end)`` on hidden states ``(B, L, D)``; ``final_norm`` applies when ``end`` is the top.

        ``context`` (B, N, Dc) is attended to by the layers that have cross-attention;
        layers with cross-attention run without it when ``context`` is None (BLIP's
        unimodal text pass). Passing ``context`` to a range without cross-attention
        is an error rather than silently ignored.
        """
        end = self.num_layers if end is None else end
        if not 0 <= start <= end <= self.num_layers:
            raise ValueError(f"layer range [{start}, {end}) is not within the encoder's {self.num_layers} layers")
        if hidden.dim() != 3 or hidden.shape[-1] != self.dim:
            raise ValueError(f"hidden: expected (B, L, {self.dim}), got {tuple(hidden.shape)}")
        _check_mask(attention_mask, hidden, "attention_mask")
        if context is not None:
            if not any(self.layers[i].cross_attn is not None for i in range(start, end)):
                raise ValueError(
                    f"context given but layers [{start}, {end}) have no cross-attention "
                    f"(cross_attention_from={self.cfg.cross_attention_from})"
                )
            if context.dim() != 3 or context.shape[0] != hidden.shape[0]:
                raise ValueError(f"context: expected (B={hidden.shape[0]}, N, Dc), got {tuple(context.shape)}")
            _check_mask(context_mask, context, "context_mask")
        causal = self.cfg.causal if causal is None else causal
        states = []
        bias = stack_bias(hidden, attention_mask, causal)  # once for every layer, not once per layer
        for layer in self.layers[start:end]:
            hidden = run_layer(self, layer, hidden, attention_mask, context, context_mask, causal, bias)
            if return_all:
                states.append(hidden)
        if end == self.num_layers:
            hidden = self.final_norm(hidden)
        return (hidden, states) if return_all else hidden

    def pool(
        self, hidden: torch.Tensor, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, L, D) -> (B, D)`` by ``cfg.pooling`` (see :func:`pool_tokens`)."""
        return pool_tokens(hidden, self.cfg.pooling, attention_mask, input_ids, self.cfg.eos_id)

    @property
    def pools_one_token(self) -> bool:
        """True when :meth:`forward_pooled` applies: a pre-norm stack whose pool reads one token per row."""
        return self.cfg.norm_first and self.num_layers > 0 and self.cfg.pooling in ("cls", "eos", "argmax")

    def forward_packed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """:meth:`forward_pooled` ``(B, D)`` without any padding: the real tokens of every row are packed end to
        end into one sequence, each attending to its own row only (and, causal, to its own past), positions
        restarting at 0 in each row. The same numbers as the padded pass, for the real tokens' work only.

        None (nothing run) when a row's real tokens are not a prefix of it (left padding), its pooled token
        lies in its padding, or the batch holds more than :data:`PACK_MAX_TOKENS` real tokens: the caller then
        runs the padded pass. Needs :attr:`pools_one_token`.
        """
        if not self.pools_one_token:
            raise ValueError(
                f"forward_packed needs a pre-norm tower pooled at one token (pooling={self.cfg.pooling!r})"
            )
        _check_mask(attention_mask, input_ids[..., None], "attention_mask")
        return _packed_forward(self, input_ids, attention_mask, token_type_ids)

    def forward_pooled(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``pool(forward(input_ids, ...), input_ids, attention_mask)`` ``(B, D)``, computing less: the last layer
        runs for the pooled token's query only (keys and values still come from every token) and the final
        norm on that token only. Needs :attr:`pools_one_token`."""
        if not self.pools_one_token:
            raise ValueError(
                f"forward_pooled needs a pre-norm tower pooled at one token; this one has norm_first="
                f"{self.cfg.norm_first}, pooling={self.cfg.pooling!r}, layers={self.num_layers}"
            )
        hidden = self.embeddings(input_ids, token_type_ids)
        _check_mask(attention_mask, hidden, "attention_mask")
        index = pool_index(hidden, self.cfg.pooling, attention_mask, input_ids, self.cfg.eos_id)[:, None]
        *body, last = self.layers
        causal = self.cfg.causal
        bias = stack_bias(hidden, attention_mask, causal)
        for layer in body:
            hidden = run_layer(self, layer, hidden, attention_mask, None, None, causal, bias)
        return self.final_norm(last.forward_at(hidden, index, attention_mask, causal))[:, 0]


# Packed attention is one (T, T) score matrix per head over all T real tokens of the batch: it pays while T is
# small (a train batch of captions), and grows with the square of the batch where the padded pass grows with its
# rows (zero-shot encodes 256 prompts at once: T ~ 4,000 took 16x the padded pass's memory and more time).
PACK_MAX_TOKENS = 1024


def _packed_forward(encoder: BertTextEncoder, input_ids, attention_mask, token_type_ids) -> torch.Tensor | None:
    """:meth:`BertTextEncoder.forward_packed` (see there); None when the batch cannot be packed."""
    rows, length = attention_mask.shape
    lengths = attention_mask.sum(dim=1)
    positions = torch.arange(length, device=input_ids.device).expand(rows, -1)
    cfg = encoder.cfg
    index = pool_index(input_ids[..., None], cfg.pooling, attention_mask, input_ids, cfg.eos_id)
    # every row's real tokens a prefix of it, and its pooled token one of them (one host sync)
    prefix = torch.equal(attention_mask, positions < lengths[:, None])
    if not prefix or not bool((index < lengths).all()) or int(lengths.sum()) > PACK_MAX_TOKENS:
        return None
    keep = attention_mask.flatten()
    pos = positions.flatten()[keep]
    row = torch.arange(rows, device=input_ids.device).repeat_interleave(lengths)
    # embedded as a batch (the positions of each row; the lookup is cheap), then the rows end to end: (1, T, D)
    hidden = encoder.embeddings(input_ids, token_type_ids).flatten(0, 1)[keep][None]
    blocked = row[:, None] != row[None, :]  # a token sees its own row only ...
    if cfg.causal:
        blocked = blocked | (pos[None, :] > pos[:, None])  # ... and, causal, nothing after itself
    bias = blocked_bias(blocked, hidden.dtype)[None, None]
    *body, last = encoder.layers
    for layer in body:
        hidden = run_layer(encoder, layer, hidden, None, None, None, False, bias)
    at = (torch.cumsum(lengths, 0) - lengths + index)[None]  # each row's pooled token in the packed sequence
    return encoder.final_norm(last.forward_at(hidden, at, attn_bias=bias[:, :, at[0]]))[0]


def pool_tokens(
    hidden: torch.Tensor,
    mode: str,
    attention_mask: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    eos_id: int = -1,
) -> torch.Tensor:
    """Pool text tokens ``(B, L, D) -> (B, D)``.

    ``cls``: the first token. ``mean``: mean over kept tokens. ``eos``: the first
    occurrence of ``eos_id`` in ``input_ids`` when ``eos_id >= 0`` (CLIP's
    end-of-text token), else the last kept token of the right-padded
    ``attention_mask`` (BERT's ``[SEP]``). ``argmax``: the first position of the
    highest id of each row (OpenAI CLIP, and transformers' CLIP with the legacy
    ``eos_token_id: 2``: there <|endoftext|> is the highest id of ordinary text). ``last``: the
    last position, padding or not (SigLIP).
    """
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":  # SigLIP: the last position whatever the mask (its tokenizer pads to a fixed length)
        return hidden[:, -1]
    if mode == "mean":
        _check_mask(attention_mask, hidden, "attention_mask")
        return masked_mean(hidden, attention_mask)
    if mode not in ("argmax", "eos"):
        raise ValueError(f"pooling={mode!r}: expected 'cls', 'eos', 'argmax', 'mean' or 'last'")
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, pool_index(hidden, mode, attention_mask, input_ids, eos_id)]


def pool_index(
    hidden: torch.Tensor,
    mode: str,
    attention_mask: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    eos_id: int = -1,
) -> torch.Tensor:
    """The position ``(B,)`` that ``cls`` / ``eos`` / ``argmax`` pooling reads in each row (see :func:`pool_tokens`)."""
    rows = hidden.shape[0]
    if mode == "cls":
        return torch.zeros(rows, dtype=torch.long, device=hidden.device)
    if mode == "argmax":
        if input_ids is None:
            raise ValueError("argmax pooling needs input_ids")
        return input_ids.argmax(dim=1)
    if mode != "eos":
        raise ValueError(f"pooling={mode!r}: pool_index reads one token: expected 'cls', 'eos' or 'argmax'")
    if eos_id >= 0:
        if input_ids is None:
            raise ValueError("eos pooling with eos_id needs input_ids")
        is_eos = input_ids == eos_id
        if not bool(is_eos.any(dim=1).all()):
            raise ValueError(f"eos pooling: some rows of input_ids lack the eos token id {eos_id}")
        return is_eos.int().argmax(dim=1)
    if attention_mask is None:
        return torch.full((rows,), hidden.shape[1] - 1, dtype=torch.long, device=hidden.device)
    _check_mask(attention_mask, hidden, "attention_mask")
    return attention_mask.long().sum(dim=1).clamp_min(1) - 1


def _check_mask(mask: torch.Tensor | None, x: torch.Tensor, name: str) -> None:
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise TypeError(f"{name}: expected a bool keep-mask (True = real token), got {mask.dtype}")
    if mask.shape != x.shape[:2]:
        raise ValueError(f"{name}: expected shape {tuple(x.shape[:2])}, got {tuple(mask.shape)}")


@part(TextConfig, "bert", BertTextEncoder)
@dataclass
class BertTextConfig(TextConfig):
    """A BERT-family text encoder. Defaults are BERT-base; ``norm_first=True, causal=True,
    final_norm=True, embed_norm=False, type_vocab_size=0, pooling='eos'`` describe CLIP's text tower."""

    type: str = "bert"
    vocab_size: int = 30522
    dim: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 2  # segment (token type / modality) table size; 0 = none
    dropout: float = 0.1
    attn_dropout: float | None = None  # attention-probability dropout; None = same as dropout
    eps: float = 1e-12
    act: str = "gelu"
    norm_first: bool = False  # False = BERT post-norm blocks
    causal: bool = False  # default causal masking (CLIP text tower, BLIP decoder)
    pooling: Literal["cls", "eos", "argmax", "mean", "last"] = "cls"
    eos_id: int = -1  # eos pooling: token id to pool at; -1 = last kept token
    final_norm: bool = False  # LayerNorm after the last layer (pre-norm towers)
    embed_norm: bool = True  # LayerNorm after the embedding sum (BERT yes, CLIP no)
    cross_attention_from: int = -1  # layers >= this index cross-attend to image tokens; -1 = none
    context_dim: int | None = None  # width of the image tokens; None = dim
    init_std: float = 0.02
    layer_scale: float | None = None  # initial per-channel scale of each residual branch (OpenCLIP's ls_init_value)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "heads", "mlp_dim", "max_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.layers < 0:  # layers: 0 = embeddings only (single-stream models fuse in the fusion stack)
            raise ValueError(f"layers={self.layers}: must be >= 0")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} is not divisible by heads={self.heads}")
        if self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size={self.type_vocab_size}: must be >= 0")
        if not -1 <= self.cross_attention_from < self.layers:
            raise ValueError(
                f"cross_attention_from={self.cross_attention_from}: expected -1 or a layer in [0, {self.layers})"
            )
        if self.pooling not in ("cls", "eos", "argmax", "mean", "last"):
            raise ValueError(f"pooling={self.pooling!r}: expected 'cls', 'eos', 'argmax', 'mean' or 'last'")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value}: expected a probability in [0, 1)")
        try:
            activation(self.act)
        except ValueError as err:
            raise ValueError(f"act: {err}") from None
