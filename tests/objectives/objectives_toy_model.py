"""A tiny model that implements the vlp model contract (src/vlp/core/outputs.py) from real vlp layers.

Used by the objective tests so they do not depend on the composed model's
recipes: a BERT-like text encoder, a region or patch visual embedding, a
single-stream fusion transformer, a causal decoder with cross-attention, and
the heads itm / mlm / mrc / mrfr.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlp.core.outputs import FusedOutput, ModelOutputs, VisualTokens
from vlp.data.batch import Batch
from vlp.layers import Transformer

# token ids of the toy vocabulary: like a trained vlp tokenizer, specials first
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
VOCAB = 40


class ToyTokenizer:
    """Only the attributes objectives read from a tokenizer."""

    pad_id, unk_id, cls_id, sep_id, mask_id, vocab_size = PAD, UNK, CLS, SEP, MASK, VOCAB


class ToyModel(nn.Module):
    def __init__(self, dim: int = 16, region_dim: int = 6, classes: int = 5, embed_dim: int = 8, dropout: float = 0.0):
        super().__init__()
        self.word = nn.Embedding(VOCAB, dim)
        self.position = nn.Embedding(32, dim)
        self.segment = nn.Embedding(2, dim)
        self.text_encoder = Transformer(dim, 1, 2, norm_first=True, dropout=dropout)
        self.region_proj = nn.Linear(region_dim, dim)
        self.box_proj = nn.Linear(4, dim)
        self.modality = nn.Embedding(2, dim)
        self.fusion = Transformer(dim, 1, 2, norm_first=True, dropout=dropout)
        self.pooler = nn.Linear(dim, dim)
        self.decoder = Transformer(dim, 1, 2, norm_first=True, cross_attention=True)
        self.text_proj = nn.Linear(dim, embed_dim)
        self.image_proj = nn.Linear(dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.norm = nn.BatchNorm1d(dim)  # a buffer-holding module, for the EMA buffer test
        self.heads = nn.ModuleDict(
            {
                "itm": nn.Linear(dim, 2),
                "mlm": nn.Linear(dim, VOCAB),
                "mrc": nn.Linear(dim, classes),
                "mrfr": nn.Linear(dim, region_dim),
                "lm": nn.Linear(dim, VOCAB),
            }
        )

    def text_tokens(self, input_ids, attention_mask, token_type_ids=None):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(positions)[None]
        if token_type_ids is not None:
            x = x + self.segment(token_type_ids)
        return self.text_encoder(x, attention_mask.bool())

    def encode_text(self, input_ids, attention_mask, token_type_ids=None):
        """L2-normalized ``(B, E)`` text embeddings from the first token, as ``forward`` computes them."""
        return F.normalize(self.text_proj(self.text_tokens(input_ids, attention_mask, token_type_ids)[:, 0]), dim=-1)

    def image_tokens(self, batch: Batch) -> VisualTokens:
        tokens = self.region_proj(batch.region_features) + self.box_proj(batch.region_boxes)
        mask = batch.region_mask
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return VisualTokens(tokens, mask, batch.region_boxes)

    def fuse(self, text, text_mask, image: VisualTokens) -> FusedOutput:
        length = text.shape[1]
        x = torch.cat([text + self.modality.weight[0], image.tokens + self.modality.weight[1]], dim=1)
        x = self.fusion(x, torch.cat([text_mask.bool(), image.mask], dim=1))
        return FusedOutput(x[:, :length], x[:, length:], torch.tanh(self.pooler(x[:, 0])))

    def decode(self, input_ids, attention_mask, image: VisualTokens):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(positions)[None]
        x = self.decoder(x, attention_mask.bool(), context=image.tokens, context_mask=image.mask, causal=True)
        return self.heads["lm"](x)

    def forward(self, batch: Batch) -> ModelOutputs:
        text = self.text_tokens(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        image = self.image_tokens(batch)
        pooled_image = (image.tokens * image.mask[..., None]).sum(1) / image.mask.sum(1, keepdim=True)
        image_embed = F.normalize(self.image_proj(self.norm(pooled_image)), dim=-1)
        return ModelOutputs(
            model=self,
            text=text,
            text_mask=batch.attention_mask.bool(),
            image=image,
            text_embed=F.normalize(self.text_proj(text[:, 0]), dim=-1),
            image_embed=image_embed,
            logit_scale=self.logit_scale,
        )


def toy_batch(size: int = 4, length: int = 9, regions: int = 5, seed: int = 0, classes: int = 5) -> Batch:
    """Captions ``[CLS] words [SEP] [PAD]..`` with multi-piece words, and padded regions."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((size, length), PAD)
    word_ids = torch.full((size, length), -1)
    mask = torch.zeros(size, length, dtype=torch.bool)
    for b in range(size):
        n = int(torch.randint(3, length - 1, (1,), generator=g))  # real tokens between [CLS] and [SEP]
        ids[b, 0], ids[b, n + 1] = CLS, SEP
        ids[b, 1 : n + 1] = torch.randint(5, VOCAB, (n,), generator=g)
        word, t = 0, 1
        while t <= n:  # words of 1 or 2 pieces
            pieces = min(int(torch.randint(1, 3, (1,), generator=g)), n + 1 - t)
            word_ids[b, t : t + pieces] = word
            word, t = word + 1, t + pieces
        mask[b, : n + 2] = True
    region_mask = torch.ones(size, regions, dtype=torch.bool)
    region_mask[0, -2:] = False
    boxes = torch.rand(size, regions, 4, generator=g)
    return Batch(
        input_ids=ids,
        attention_mask=mask,
        token_type_ids=torch.zeros_like(ids),
        word_ids=word_ids,
        region_features=torch.randn(size, regions, 6, generator=g),
        region_boxes=boxes,
        region_mask=region_mask,
        region_class_probs=torch.softmax(torch.randn(size, regions, classes, generator=g) * 2, -1),
    )
