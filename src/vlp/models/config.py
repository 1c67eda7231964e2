"""The model section of a recipe: which parts, how big, which heads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vlp.fusion.config import FusionConfig
from vlp.models.heads import HeadConfig, validate_heads
from vlp.text.config import TextConfig
from vlp.vision.config import VisionConfig


@dataclass
class ModelConfig:
    name: str = "custom"
    text: TextConfig | None = None
    vision: VisionConfig | None = None
    fusion: FusionConfig | None = None
    embed_dim: int = 0  # size of the dual-encoder embedding space; 0 = no dual-encoder side
    heads: dict[str, HeadConfig] = field(default_factory=dict)  # head name -> its options (vlp.models.heads)
    momentum: float = 0.0  # EMA decay of the momentum model (ALBEF distillation); 0 = off
    tokenizer: str = ""  # tokenizer folder or file; empty = the recipe's default
    # BLIP's image-grounded text decoder: a causal text encoder config whose layers all have
    # cross-attention (cross_attention_from: 0); enables model.decode() and adds an ``lm`` head.
    decoder: TextConfig | None = None
    # which decoder weights are the text encoder's: "none", or BLIP's "all_but_self_attention"
    # (embeddings, cross-attention, feed-forward and their norms are shared; causal self-attention is not)
    decoder_share: Literal["none", "all_but_self_attention"] = "none"
    # OSCAR: append Batch.tag_ids (object tags, segment 1) to the caption: [CLS] caption [SEP] tags [SEP]
    use_tags: bool = False
    # image embedding of the dual side: the first token ([CLS] / CLIP's attention pool) or the
    # masked mean; "auto" picks "first" when the visual encoder has such a token. "max": the
    # channel-wise max over the kept tokens (a presence detector: measured to let a tiny ViT learn
    # which shapes are in a ShapesWorld image, where [CLS] and the mean did not)
    # "map": SigLIP's multihead attention pooling (a learned probe attends over the tokens; vlp.layers.map_pool)
    image_pool: Literal["auto", "first", "mean", "max", "map"] = "auto"
    proj_bias: bool = True  # bias in text_proj / image_proj (ALBEF yes, CLIP no)
    temperature: float = 0.07  # initial ITC temperature; logit_scale starts at log(1 / temperature)
    # SigLIP's learnable logit bias b (logit = exp(logit_scale) <x, y> + b), started at logit_bias_init;
    # off by default so that models without it keep their parameter set (and old checkpoints load)
    logit_bias: bool = False
    logit_bias_init: float = -10.0
    # cut each text batch to its longest real length (attention_mask), rounded up to this multiple, before
    # the text tower and the fusion module, and pad the outputs back with zeros: exact at every kept
    # position and for every pooling but SigLIP's "last" (never cut); 0 = off (vlp.text.trim)
    text_trim: int = 8

    def __post_init__(self) -> None:
        self.heads = validate_heads(self.heads)  # built in Python with plain dicts: the same typed configs
        if self.embed_dim < 0:
            raise ValueError(f"model.embed_dim must be >= 0, got {self.embed_dim}")
        if self.text_trim < 0:
            raise ValueError(f"model.text_trim must be >= 0 (0 = off), got {self.text_trim}")
        if self.temperature <= 0:
            raise ValueError(f"model.temperature must be > 0, got {self.temperature}")
        if self.logit_bias and not self.embed_dim:
            raise ValueError("model.logit_bias: true needs a dual-encoder side (model.embed_dim > 0)")
