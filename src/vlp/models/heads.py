"""Task and pretraining heads, built by name from ``model.heads`` in a recipe.

``heads: {itm: {}, mlm: {}, vqa: {num_answers: 3129}}`` builds an ``nn.ModuleDict`` with
one module per entry. Each key names a member of the :class:`HeadConfig` family (its options
dataclass, registered with :func:`vlp.config.part` together with the builder that sizes it).
Every head maps batch-first tensors:

==========  ==============================  =========================================
name        input                           output
==========  ==============================  =========================================
``itm``     pooled ``(B, P)``               match logits ``(B, 2)`` (index 1 = match)
``mlm``     fused text ``(..., Dt)``        vocabulary logits ``(..., V)``
``mrc``     fused image ``(..., Dv)``       region class logits ``(..., C)``
``mrfr``    fused image ``(..., Dv)``       regressed region features ``(..., F)``
``vqa``     pooled ``(B, P)``               answer logits ``(B, A)``
``box``     pooled ``(B, P)``               box ``(B, 4)`` normalized ``(x1, y1, x2, y2)``
``rank``    pooled ``(B, P)``               retrieval score ``(B, 1)`` (ViLT)
``lm``      decoder states ``(..., Dd)``    vocabulary logits ``(..., V)``
==========  ==============================  =========================================

``region_score`` (referring expressions with region models) maps fused image tokens
``(..., Dv)`` to one logit per region ``(..., 1)``. ``proposal_score`` (referring expressions
with patch/grid models and candidate boxes) maps ROI-pooled candidate features ``(B, R, F)``,
their geometry ``(B, R, 7)`` and the pooled text-image output ``(B, P)`` to ``(B, R)`` logits.
``tagging`` (multi-label image tagging) maps the pooled image-tower tokens ``(B, W)``, before
any projection, to one logit per category ``(B, C)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from vlp.config import ConfigError, KeyedFamily, part
from vlp.layers import activation


@dataclass
class HeadContext:
    """What the model knows when it builds its heads: widths and the tables to tie to."""

    pooled_dim: int = 0  # width of FusedOutput.pooled; 0 = no fusion
    text_dim: int = 0  # width of fused text tokens
    image_dim: int = 0  # width of fused image tokens
    word_embeddings: nn.Embedding | None = None  # the text encoder's word table (MLM ties to it)
    decoder_dim: int = 0
    decoder_embeddings: nn.Embedding | None = None  # the decoder's word table (LM ties to it)
    region_feature_dim: int = 0  # input width of region features (MRFR target)
    vision_dim: int = 0  # width of the image tower's tokens (model.vision.dim; the tagging head)


class HeadConfig(KeyedFamily):
    """Config family of heads, keyed by the head's name in ``model.heads``.

    A member is registered with ``part(HeadConfig, name, builder)``, where ``builder(cfg, ctx) ->
    nn.Module`` sizes the head from the :class:`HeadContext`.
    """

    members: ClassVar[dict[str, type]] = {}
    noun: ClassVar[str] = "head"
    # saved recipes keep their heads as written (``itm: {}``), as they were before heads were typed, so a
    # run saved then still resumes: its recipe.yaml must match the one its resume writes
    save_defaults: ClassVar[bool] = False


HEADS = HeadConfig.members  # head name -> its options dataclass


def validate_heads(heads: Mapping[str, Any], where: str = "model.heads") -> dict[str, HeadConfig]:
    """Every head's typed options from ``{name: options}`` (plain mappings or configs); errors name the key."""
    return HeadConfig.parse_all(heads, where)


def build_heads(heads: Mapping[str, Any], ctx: HeadContext) -> nn.ModuleDict:
    """``nn.ModuleDict`` of the configured heads, sized from ``ctx``."""
    return nn.ModuleDict({name: type(cfg).builds(cfg, ctx) for name, cfg in validate_heads(heads).items()})


def _need(value: int, head: str, what: str) -> int:
    if not value:
        raise ConfigError(f"model.heads.{head}: needs {what}, which this model does not have")
    return value


class PredictionHead(nn.Module):
    """BERT's prediction head: dense -> act -> LayerNorm -> decoder (+ its own bias).

    ``(..., D) -> (..., V)``. The decoder weight is the word-embedding table when tied
    (one Parameter, so saving stores it once); the transform maps ``D`` to the table's width.
    """

    def __init__(
        self, dim: int, vocab_size: int, embed_dim: int, tie_to: nn.Embedding | None, act: str, eps: float
    ) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, embed_dim)
        self.act = activation(act)
        self.norm = nn.LayerNorm(embed_dim, eps=eps)
        self.decoder = nn.Linear(embed_dim, vocab_size, bias=False)
        if tie_to is not None:
            self.decoder.weight = tie_to.weight
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(x)))) + self.bias


@dataclass(eq=False)
class ITMHeadConfig(HeadConfig):
    """Image-text matching: ``Linear(P, 2)`` on the pooled output (no options)."""


def _itm(cfg: ITMHeadConfig, ctx: HeadContext) -> nn.Module:
    return nn.Linear(_need(ctx.pooled_dim, "itm", "a fusion module (pooled output)"), 2)


part(HeadConfig, "itm", _itm)(ITMHeadConfig)


@dataclass(eq=False)
class MLMHeadConfig(HeadConfig):
    tie: bool = True  # decoder weight = the text encoder's word embeddings (BERT, ALBEF, ViLT)
    act: str = "gelu"
    eps: float = 1e-12


def _prediction_head(cfg: Any, dim: int, table: nn.Embedding | None, name: str) -> PredictionHead:
    if table is None:
        raise ConfigError(f"model.heads.{name}: needs a text part with word embeddings (model.text)")
    vocab, width = table.weight.shape
    return PredictionHead(dim, vocab, width, table if cfg.tie else None, cfg.act, cfg.eps)


def _mlm(cfg: MLMHeadConfig, ctx: HeadContext) -> nn.Module:
    dim = _need(ctx.text_dim, "mlm", "fused text tokens (a fusion module other than 'none')")
    return _prediction_head(cfg, dim, ctx.word_embeddings, "mlm")


part(HeadConfig, "mlm", _mlm)(MLMHeadConfig)


@dataclass(eq=False)
class LMHeadConfig(HeadConfig):
    tie: bool = True  # decoder weight = the decoder's word embeddings
    act: str = "gelu"
    eps: float = 1e-12


def _lm(cfg: LMHeadConfig, ctx: HeadContext) -> nn.Module:
    dim = _need(ctx.decoder_dim, "lm", "a text decoder (model.decoder)")
    return _prediction_head(cfg, dim, ctx.decoder_embeddings, "lm")


part(HeadConfig, "lm", _lm)(LMHeadConfig)


class RegionHead(nn.Module):
    """UNITER's region heads: ``Linear -> GELU -> LayerNorm -> Linear``, ``(..., D) -> (..., out)``."""

    def __init__(self, dim: int, out: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=eps), nn.Linear(dim, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(eq=False)
class MRCHeadConfig(HeadConfig):
    num_classes: int  # detector classes (1601 for Visual Genome bottom-up features)

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")


def _mrc(cfg: MRCHeadConfig, ctx: HeadContext) -> nn.Module:
    return RegionHead(_need(ctx.image_dim, "mrc", "fused image tokens"), cfg.num_classes)


part(HeadConfig, "mrc", _mrc)(MRCHeadConfig)


@dataclass(eq=False)
class MRFRHeadConfig(HeadConfig):
    feature_dim: int = 0  # width of the regressed region features; 0 = the region encoder's input width


def _mrfr(cfg: MRFRHeadConfig, ctx: HeadContext) -> nn.Module:
    out = cfg.feature_dim or _need(ctx.region_feature_dim, "mrfr", "feature_dim (no region encoder to read it from)")
    return RegionHead(_need(ctx.image_dim, "mrfr", "fused image tokens"), out)


part(HeadConfig, "mrfr", _mrfr)(MRFRHeadConfig)


@dataclass(eq=False)
class VQAHeadConfig(HeadConfig):
    num_answers: int  # size of the answer vocabulary (3129 for VQAv2)
    hidden: int = 0  # hidden width; 0 = 2 * pooled width (ViLT, UNITER)

    def __post_init__(self) -> None:
        if self.num_answers < 1:
            raise ValueError(f"num_answers must be >= 1, got {self.num_answers}")


def _vqa(cfg: VQAHeadConfig, ctx: HeadContext) -> nn.Module:
    dim = _need(ctx.pooled_dim, "vqa", "a fusion module (pooled output)")
    hidden = cfg.hidden or 2 * dim
    # ViLT's classifier: Linear -> LayerNorm -> GELU -> Linear
    return nn.Sequential(nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, cfg.num_answers))


part(HeadConfig, "vqa", _vqa)(VQAHeadConfig)


@dataclass(eq=False)
class RankHeadConfig(HeadConfig):
    """Image-text retrieval score: ``Linear(P, 1)`` on the pooled output (ViLT's ``rank_output``; no options)."""


def _rank(cfg: RankHeadConfig, ctx: HeadContext) -> nn.Module:
    return nn.Linear(_need(ctx.pooled_dim, "rank", "a fusion module (pooled output)"), 1)


part(HeadConfig, "rank", _rank)(RankHeadConfig)


class BoxHead(nn.Module):
    """Referring-expression box regression: MLP -> sigmoid ``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``.

    ``(B, P) -> (B, 4)`` in normalized image coordinates. Predicting centre and size keeps
    ``x1 <= x2`` and ``y1 <= y2`` by construction; corners are clamped to ``[0, 1]``.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, 4)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        cx, cy, w, h = torch.sigmoid(self.out(self.net(pooled))).unbind(-1)
        box = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
        return box.clamp(0.0, 1.0)


@dataclass(eq=False)
class BoxHeadConfig(HeadConfig):
    hidden: int = 0  # 0 = pooled width


def _box(cfg: BoxHeadConfig, ctx: HeadContext) -> nn.Module:
    dim = _need(ctx.pooled_dim, "box", "a fusion module (pooled output)")
    return BoxHead(dim, cfg.hidden or dim)


part(HeadConfig, "box", _box)(BoxHeadConfig)


@dataclass(eq=False)
class RegionScoreHeadConfig(HeadConfig):
    """Referring expressions with region models: one logit per fused region token.

    ``hidden: 0`` is a plain ``Linear(Dv, 1)``; ``hidden > 0`` is UNITER's MLP
    (``Linear -> GELU -> LayerNorm -> Linear``) with that hidden width.
    """

    hidden: int = 0


def _region_score(cfg: RegionScoreHeadConfig, ctx: HeadContext) -> nn.Module:
    dim = _need(ctx.image_dim, "region_score", "fused image tokens")
    if cfg.hidden <= 0:
        return nn.Linear(dim, 1)
    return nn.Sequential(nn.Linear(dim, cfg.hidden), nn.GELU(), nn.LayerNorm(cfg.hidden, eps=1e-12),
                         nn.Linear(cfg.hidden, 1))  # fmt: skip


part(HeadConfig, "region_score", _region_score)(RegionScoreHeadConfig)


@dataclass(eq=False)
class TaggingHeadConfig(HeadConfig):
    """Multi-label image tagging (:mod:`vlp.tasks.tagging`): ``Linear(W, C)`` on the image tower's tokens
    pooled as ``pool`` says (``auto`` = the model's ``image_pool``), before any projection.

    ``pool`` and ``class_names`` live here, not in the task, so a saved model predicts on its own.
    """

    num_classes: int
    pool: Literal["auto", "first", "max", "mean"] = "auto"
    class_names: list[str] = field(default_factory=list)  # label order; empty = unnamed

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names: {len(self.class_names)} names for num_classes {self.num_classes}")


def _tagging(cfg: TaggingHeadConfig, ctx: HeadContext) -> nn.Module:
    return nn.Linear(_need(ctx.vision_dim, "tagging", "an image tower (model.vision)"), cfg.num_classes)


part(HeadConfig, "tagging", _tagging)(TaggingHeadConfig)


@dataclass(eq=False)
class ProposalScoreHeadConfig(HeadConfig):
    """Referring expressions with patch/grid models: one logit per candidate box.

    ``feature_dim``: width of a pooled candidate feature (token width x pooled cells; 0 = fused
    image width); ``hidden``: joint width (0 = pooled width). See :class:`ProposalScoreHead`.
    """

    feature_dim: int = 0
    hidden: int = 0


class ProposalScoreHead(nn.Module):
    """``(features (B, R, F), geometry (B, R, 7), pooled (B, P)) -> logits (B, R)``.

    A candidate is its pooled feature plus its box geometry (UNITER's 7-d ``x1, y1, x2, y2, w, h,
    w*h``), each projected and summed and normalized; the text side is the pooled output. The
    logit is an MLP over ``[v, t, v * t]``: the product lets one hidden layer express "this box
    matches this expression" rather than only how good a box or an expression is on its own.
    """

    def __init__(self, feature_dim: int, pooled_dim: int, hidden: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.feature = nn.Linear(feature_dim, hidden)
        self.geometry = nn.Linear(7, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.text = nn.Linear(pooled_dim, hidden)
        self.score = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, geometry: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        v = self.norm(self.feature(features) + self.geometry(geometry))  # (B, R, H)
        t = self.text(pooled).unsqueeze(1).expand_as(v)  # (B, R, H)
        return self.score(torch.cat([v, t, v * t], dim=-1)).squeeze(-1)


def _proposal_score(cfg: ProposalScoreHeadConfig, ctx: HeadContext) -> nn.Module:
    pooled = _need(ctx.pooled_dim, "proposal_score", "a fusion module (pooled output)")
    feature = cfg.feature_dim or _need(ctx.image_dim, "proposal_score", "feature_dim or fused image tokens")
    return ProposalScoreHead(feature, pooled, cfg.hidden or pooled)


part(HeadConfig, "proposal_score", _proposal_score)(ProposalScoreHeadConfig)


__all__ = [
    "HEADS",
    "BoxHead",
    "BoxHeadConfig",
    "HeadConfig",
    "HeadContext",
    "ITMHeadConfig",
    "LMHeadConfig",
    "MLMHeadConfig",
    "MRCHeadConfig",
    "MRFRHeadConfig",
    "PredictionHead",
    "ProposalScoreHead",
    "ProposalScoreHeadConfig",
    "RankHeadConfig",
    "RegionHead",
    "RegionScoreHeadConfig",
    "TaggingHeadConfig",
    "VQAHeadConfig",
    "build_heads",
    "validate_heads",
]
