"""The composed vision-language model: text part + vision part + fusion part + heads.

Every classic model of the survey is one :class:`VisionLanguageModel` with a different
:class:`~vlp.models.config.ModelConfig`; see :mod:`vlp.core.outputs` for the contract
that objectives and tasks use. All tensors are batch-first; masks are bool keep-masks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import vlp.parts  # noqa: F401  registers every part type, so that cfg's type keys build
from vlp.config import ConfigError, build, family_name
from vlp.core.outputs import FusedOutput, ModelOutputs, VisualTokens
from vlp.data.batch import Batch
from vlp.fusion.base import FusionModule
from vlp.layers import Transformer, masked_mean
from vlp.layers.map_pool import MapPool
from vlp.models.config import ModelConfig
from vlp.models.heads import HeadContext, build_heads
from vlp.text.trim import cut, pad_back, trimmed_length


class VisionLanguageModel(nn.Module):
    """``VisionLanguageModel(cfg)``: builds ``text``, ``vision``, ``fusion``, optional ``decoder``,
    dual-encoder projections (``text_proj``, ``image_proj``, ``logit_scale``) when
    ``cfg.embed_dim > 0``, and ``heads`` from ``cfg.heads``.

    ``logit_scale`` is the *log* of the inverse temperature (CLIP's convention), initialized to
    ``log(1 / cfg.temperature)``; objectives exponentiate (and clamp) it.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text = build(cfg.text) if cfg.text is not None else None
        self.vision = build(cfg.vision) if cfg.vision is not None else None
        self.fusion: FusionModule | None = build(cfg.fusion) if cfg.fusion is not None else None
        if self.fusion is not None and self.fusion.runs_text_encoder:
            if self.text is None:
                raise ConfigError(
                    f"model.fusion: type {family_name(cfg.fusion)} runs the text encoder's layers; "
                    "model.text is missing"
                )
            self.fusion.bind(self.text)
        self._check_fusion_widths()
        self.decoder = build(cfg.decoder) if cfg.decoder is not None else None
        if self.decoder is not None and cfg.decoder_share != "none":
            self._share_decoder()
        if cfg.embed_dim:
            if self.text is None or self.vision is None:
                raise ConfigError("model.embed_dim > 0 needs both model.text and model.vision (a dual-encoder side)")
            text_width, image_width = self._dual_widths()
            self.text_proj = nn.Linear(text_width, cfg.embed_dim, bias=cfg.proj_bias)
            self.image_proj = nn.Linear(image_width, cfg.embed_dim, bias=cfg.proj_bias)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))
        else:
            self.text_proj = self.image_proj = self.logit_scale = None
        # registered only when enabled: models without it keep exactly their old parameter names
        self.logit_bias = nn.Parameter(torch.tensor(float(cfg.logit_bias_init))) if cfg.logit_bias else None
        if cfg.image_pool == "map":
            self.image_pool_head = self._map_pool()
        heads = dict(cfg.heads)
        if self.decoder is not None:
            heads.setdefault("lm", {})  # a decoder is only useful with its prediction head
        fusion = self.fusion
        self.heads = build_heads(
            heads,
            HeadContext(
                pooled_dim=getattr(fusion, "pooled_dim", 0),
                text_dim=getattr(fusion, "text_dim", 0),
                image_dim=getattr(fusion, "image_dim", 0),
                word_embeddings=self.text.embeddings.word if self.text is not None else None,
                decoder_dim=self.decoder.dim if self.decoder is not None else 0,
                decoder_embeddings=self.decoder.embeddings.word if self.decoder is not None else None,
                region_feature_dim=getattr(self.vision, "feature_dim", 0) or 0,
                vision_dim=getattr(self.vision, "dim", 0) or 0,
            ),
        )
        self.recipe = None  # set by create_model so that save_pretrained can store the whole recipe

    # ----------------------------------------------------------------- construction checks
    def _check_fusion_widths(self) -> None:
        fusion = self.fusion
        if not self.has_fusion:
            return
        if self.text is not None and fusion.text_in_dim and fusion.text_in_dim != self.text.dim:
            raise ConfigError(
                f"model.fusion takes text tokens of width {fusion.text_in_dim} but model.text.dim is {self.text.dim}; "
                "set model.fusion.text_in_dim to project them"
            )
        if self.vision is not None and fusion.image_in_dim and fusion.image_in_dim != self.vision.dim:
            key = fusion.image_width_key
            raise ConfigError(
                f"model.fusion takes visual tokens of width {fusion.image_in_dim} but model.vision.dim is "
                f"{self.vision.dim}; set {key}: {self.vision.dim}"
            )

    def _share_decoder(self) -> None:
        """BLIP: the decoder reuses the text encoder's modules except causal self-attention (and its norm)."""
        text, dec = self.text, self.decoder
        if text is None:
            raise ConfigError("model.decoder_share needs model.text to share with")
        if (dec.dim, len(dec.layers)) != (text.dim, len(text.layers)):
            raise ConfigError(
                f"model.decoder_share: decoder ({len(dec.layers)} layers of {dec.dim}) must match model.text "
                f"({len(text.layers)} layers of {text.dim})"
            )
        if dec.embeddings.word.weight.shape != text.embeddings.word.weight.shape:
            raise ConfigError("model.decoder_share: model.decoder.vocab_size must equal model.text.vocab_size")
        dec.embeddings = text.embeddings
        for i, (mine, theirs) in enumerate(zip(dec.layers, text.layers)):
            if mine.cross_attn is not None:
                if theirs.cross_attn is None:
                    raise ConfigError(
                        f"model.decoder_share: decoder layer {i} has cross-attention but text layer {i} has none; "
                        "set model.text.cross_attention_from: 0 (BLIP)"
                    )
                mine.cross_attn, mine.norm_cross = theirs.cross_attn, theirs.norm_cross
            mine.mlp, mine.norm2 = theirs.mlp, theirs.norm2

    def _dual_widths(self) -> tuple[int, int]:
        if self.towers_in_fusion:
            return self.fusion.text_dim, self.fusion.image_dim
        return self.text.dim, self.vision.dim

    # ----------------------------------------------------------------- what the fusion part declares
    @property
    def has_fusion(self) -> bool:
        """True when the model has a fusion module that fuses (``fuse`` works); False for dual encoders."""
        return self.fusion is not None and self.fusion.fuses

    @property
    def towers_in_fusion(self) -> bool:
        """True when the unimodal towers run inside the fusion module's shared layers (VLMo's MoME)."""
        return self.fusion is not None and self.fusion.towers_inside

    # ----------------------------------------------------------------- unimodal parts
    def _need(self, part: str) -> nn.Module:
        module = getattr(self, part)
        if module is None:
            raise RuntimeError(f"model {self.cfg.name!r} has no {part} part (model.{part} is not configured)")
        return module

    def join_tags(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        tag_ids: torch.Tensor,
        tag_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """OSCAR's text side ``[CLS] caption [SEP] tags [SEP]``: ``(B, L) + (B, T) -> (B, L + T)``.

        ``tag_ids`` are the tokenizer's ``encode_tags`` output (tag word pieces ending in [SEP],
        no [CLS]) and get segment id 1. Each row is packed so that its real tokens come first
        (caption, then tags) and padding last: caption positions keep their indices, and the
        tags get the positions right after the caption, as in OSCAR.
        """
        if tag_mask is None:
            tag_mask = torch.ones_like(tag_ids, dtype=torch.bool)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        ids = torch.cat([input_ids, tag_ids], dim=1)
        mask = torch.cat([attention_mask, tag_mask], dim=1)
        types = torch.cat([token_type_ids, torch.ones_like(tag_ids)], dim=1)
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # real tokens first, in order
        ids, mask, types = ids.gather(1, order), mask.gather(1, order), types.gather(1, order)
        return ids, mask, types * mask

    def text_tokens(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids=None
    ) -> torch.Tensor:
        """Unimodal text tokens ``(B, L, D)``: the input the fusion module expects.

        Single-stream and MoME models: the embeddings. ALBEF: layers ``[0, from_layer)``.
        BLIP (``text_cross`` with ``restart``): the embeddings, since fusion re-runs every layer.
        Co-attention and dual encoders: the whole text encoder. With ``model.text_trim`` the tower runs on
        the batch cut to its longest real length and the result is zero-padded back to ``L``
        (:mod:`vlp.text.trim`: the same values at every kept position).
        """
        self._need("text")
        end = self.fusion.text_input_layers() if self.fusion is not None else None
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        return self._run_text(input_ids, attention_mask, token_type_ids, end)

    def _text_length(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
        """How far the text side may be cut (``model.text_trim``; see :mod:`vlp.text.trim`)."""
        cfg = getattr(self.text, "cfg", None)
        pooling, eos_id = getattr(cfg, "pooling", "last"), getattr(cfg, "eos_id", -1)
        return trimmed_length(attention_mask, self.cfg.text_trim, input_ids, pooling, eos_id)

    def _run_text(self, input_ids, attention_mask, token_type_ids, end: int | None) -> torch.Tensor:
        """The text tower's layers ``[0, end)`` on the trimmed batch, padded back to the batch's length."""
        length = input_ids.shape[1]
        n = self._text_length(input_ids, attention_mask) if input_ids.dim() == 2 else length
        if n >= length:
            return self.text(input_ids, attention_mask, token_type_ids, end_layer=end)
        tokens = self.text(cut(input_ids, n), cut(attention_mask, n), cut(token_type_ids, n), end_layer=end)
        return pad_back(tokens, length)

    def image_tokens(self, batch_or_images: Batch | torch.Tensor) -> VisualTokens:
        """Unimodal visual tokens (VisualTokens ``(B, N, D)`` + keep-mask) from a Batch or images ``(B, 3, H, W)``."""
        return self._need("vision")(batch_or_images)

    def fuse(self, text: torch.Tensor, text_mask: torch.Tensor, image: VisualTokens) -> FusedOutput:
        """Joint representation of ``text`` (from :meth:`text_tokens`) and ``image`` (from :meth:`image_tokens`).

        With ``model.text_trim`` the fusion runs on the text cut to ``text_mask``'s longest real length;
        ``text`` comes back zero-padded to ``L`` (every fusion design pools position 0 or the image).
        """
        if not self.has_fusion:
            raise RuntimeError(
                f"model {self.cfg.name!r} is a dual encoder (no fusion module): it has no fuse(); "
                "use encode_text / encode_image"
            )
        length = text.shape[1]
        n = trimmed_length(text_mask, self.cfg.text_trim) if text_mask is not None and text.dim() == 3 else length
        if n >= length:
            return self.fusion(text, text_mask, image)
        fused = self.fusion(cut(text, n), cut(text_mask, n), image)  # every fusion design pools position 0
        return FusedOutput(text=pad_back(fused.text, length), image=fused.image, pooled=fused.pooled)

    # ----------------------------------------------------------------- dual-encoder side
    def _need_dual(self) -> None:
        if self.text_proj is None:
            raise RuntimeError(
                f"model {self.cfg.name!r} has no dual-encoder side (model.embed_dim is 0), so it has no "
                "encode_text / encode_image"
            )

    def _text_embed(self, input_ids, attention_mask, token_type_ids, tokens=None) -> torch.Tensor:
        """(B, E) normalized text embedding; ``tokens`` = an already computed :meth:`text_tokens` output."""
        if self.towers_in_fusion:
            tokens = tokens if tokens is not None else self.text_tokens(input_ids, attention_mask, token_type_ids)
            n = trimmed_length(attention_mask, self.cfg.text_trim)  # pooled at position 0
            pooled = self.fusion.encode_text(cut(tokens, n), cut(attention_mask, n))[:, 0]
        else:
            fusion = self.fusion
            end = fusion.unimodal_text_layers() if fusion is not None else None
            if tokens is None and (end is None or end == getattr(self.text, "num_layers", -1)):
                pooled = self._pooled_text(input_ids, attention_mask, token_type_ids)
                if pooled is not None:
                    return F.normalize(self.text_proj(pooled), dim=-1)
            if fusion is not None and end != fusion.text_input_layers():
                # e.g. BLIP: the fusion input is the embeddings, the unimodal text is the whole stack
                tokens = self._run_text(input_ids, attention_mask, token_type_ids, end)
            elif tokens is None:
                tokens = self.text_tokens(input_ids, attention_mask, token_type_ids)
            pooled = self.text.pool(tokens, input_ids, attention_mask)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def _pooled_text(self, input_ids, attention_mask, token_type_ids) -> torch.Tensor | None:
        """The whole text tower's pooled ``(B, D)``, its last layer run for the pooled token only (None: the
        tower cannot: post-norm, mean pooling, ...); on the trimmed batch like :meth:`text_tokens`."""
        if not getattr(self.text, "pools_one_token", False) or input_ids.dim() != 2:
            return None
        n = self._text_length(input_ids, attention_mask)
        ids, mask, types = cut(input_ids, n), cut(attention_mask, n), cut(token_type_ids, n)
        if self.cfg.text_trim > 0:
            # dropping padding as far as it goes: the rows packed end to end (None: left padding, ...)
            packed = self.text.forward_packed(ids, mask, types)
            if packed is not None:
                return packed
        return self.text.forward_pooled(ids, mask, types)

    def _image_embed(self, image: VisualTokens) -> torch.Tensor:
        if self.towers_in_fusion:
            pooled = self.fusion.encode_image(image.tokens, image.mask)[:, 0]
        else:
            pooled = self.pool_image_tokens(image)
        return F.normalize(self.image_proj(pooled), dim=-1)

    def pool_image_tokens(self, image: VisualTokens, pool: str = "auto") -> torch.Tensor:
        """Visual tokens ``(B, N, D)`` -> ``(B, D)`` on the image tower's width (no projection).

        ``pool``: ``first`` (the leading [CLS] / attention-pooled token), ``max`` (channel-wise max
        over kept tokens), ``mean`` (mean of kept tokens) or ``auto`` = the model's ``image_pool``.
        The dual-encoder embedding projects exactly this (except for MoME models, whose image
        tower runs inside the fusion module).
        """
        how = self._image_pool() if pool == "auto" else pool
        if how == "first":
            return image.tokens[:, 0]
        if how == "max":
            return image.tokens.masked_fill(~image.mask[..., None], float("-inf")).amax(dim=1)
        if how == "mean":
            return masked_mean(image.tokens, image.mask)
        if how == "map" and hasattr(self, "image_pool_head"):
            return self.image_pool_head(image.tokens, image.mask)
        raise ValueError(f"pool: {pool!r} is not one of auto, first, max, mean (or map with model.image_pool: map)")

    def _map_pool(self) -> MapPool:
        """SigLIP's attention-pooling head on the image tower's width, heads and MLP size."""
        vision = getattr(self.vision, "config", None)
        if self.vision is None or vision is None or not hasattr(vision, "heads"):
            raise ConfigError("model.image_pool: map needs a transformer image tower (model.vision with heads)")
        dim = self.vision.dim
        mlp_dim = getattr(vision, "mlp_dim", 0) or 4 * dim
        return MapPool(dim, vision.heads, mlp_dim, getattr(vision, "act", "gelu"), getattr(vision, "eps", 1e-6))

    def _image_pool(self) -> str:
        if self.cfg.image_pool != "auto":
            return self.cfg.image_pool
        has_first = getattr(self.vision, "num_prefix_tokens", 0) > 0  # [CLS] or an attention-pooled token
        return "first" if has_first else "mean"

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids=None
    ) -> torch.Tensor:
        """L2-normalized text embeddings ``(B, embed_dim)`` of the dual-encoder side."""
        self._need_dual()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        return self._text_embed(input_ids, attention_mask, token_type_ids)

    def encode_image(self, batch_or_images: Batch | torch.Tensor) -> torch.Tensor:
        """L2-normalized image embeddings ``(B, embed_dim)`` of the dual-encoder side."""
        self._need_dual()
        prefix_tokens = getattr(self.vision, "prefix_tokens", None)
        has_prefix = getattr(self.vision, "num_prefix_tokens", 0) > 0
        if prefix_tokens is not None and has_prefix and not self.towers_in_fusion and self._image_pool() == "first":
            # [CLS] pooling reads one token: the tower's last layer runs for that query only
            return F.normalize(self.image_proj(prefix_tokens(batch_or_images)[:, 0]), dim=-1)
        return self._image_embed(self.image_tokens(batch_or_images))

    # ----------------------------------------------------------------- generation
    def decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, image: VisualTokens) -> torch.Tensor:
        """Image-grounded causal decoding: ids ``(B, L)`` -> next-token logits ``(B, L, V)``.

        Position ``i`` sees tokens ``<= i`` and every kept image token (cross-attention). With
        ``model.text_trim`` the decoder runs on the batch cut to ``attention_mask``'s longest real length
        and the logits of the cut (padding) positions are zeros; losses ignore those targets.
        """
        decoder = self._need("decoder")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        length = input_ids.shape[1]
        n = trimmed_length(attention_mask, self.cfg.text_trim)
        ids, mask = cut(input_ids, n), cut(attention_mask, n)
        states = decoder(ids, mask, context=image.tokens, context_mask=image.mask, causal=True)
        return pad_back(self.heads["lm"](states), length)

    # ----------------------------------------------------------------- the shared pass
    def text_inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(input_ids, attention_mask, token_type_ids)`` of the text side, tags joined when ``use_tags``."""
        ids, mask, types = batch.input_ids, batch.attention_mask, batch.token_type_ids
        if mask is None:
            mask = torch.ones_like(ids, dtype=torch.bool)
        if self.cfg.use_tags and batch.tag_ids is not None:
            ids, mask, types = self.join_tags(ids, mask, types, batch.tag_ids, batch.tag_mask)
        return ids, mask, types

    def forward(self, batch: Batch) -> ModelOutputs:
        """The unimodal pass every objective shares (text tokens, visual tokens, dual embeddings).

        ``extra`` holds the text-side ``input_ids``/``attention_mask``/``token_type_ids`` actually
        used (they differ from the batch's when OSCAR tags were joined).
        """
        out = ModelOutputs(model=self)
        if self.text is not None and batch.input_ids is not None:
            ids, mask, types = self.text_inputs(batch)
            out.text, out.text_mask = self.text_tokens(ids, mask, types), mask
            out.extra.update(input_ids=ids, attention_mask=mask, token_type_ids=types)
            if self.text_proj is not None:
                out.text_embed = self._text_embed(ids, mask, types, tokens=out.text)
        if self.vision is not None and (batch.images is not None or batch.region_features is not None):
            out.image = self.image_tokens(batch)
            if self.image_proj is not None:
                out.image_embed = self._image_embed(out.image)
        out.logit_scale, out.logit_bias = self.logit_scale, self.logit_bias
        return out

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute transformer layers in backward (less activation memory)."""
        for module in self.modules():
            if isinstance(module, Transformer):
                module.grad_checkpointing = enable
            elif module is not self and hasattr(module, "set_grad_checkpointing"):
                module.set_grad_checkpointing(enable)


__all__ = ["VisionLanguageModel"]
