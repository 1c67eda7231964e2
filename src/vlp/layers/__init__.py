"""Building blocks shared by every encoder, fusion module and head."""

from vlp.layers.attention import Attention, attention_bias
from vlp.layers.block import MLP, QuickGELU, Transformer, TransformerBlock, activation, masked_mean

__all__ = [
    "MLP",
    "Attention",
    "QuickGELU",
    "Transformer",
    "TransformerBlock",
    "activation",
    "attention_bias",
    "masked_mean",
]
