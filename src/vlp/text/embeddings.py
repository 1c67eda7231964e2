"""Text input embeddings: word + position + segment, then LayerNorm and dropout (BERT's recipe)."""

from __future__ import annotations

import torch
from torch import nn

from vlp.layers.embedding import lookup


class TextEmbeddings(nn.Module):
    """``(B, L)`` token ids -> ``(B, L, D)`` embeddings.

    ``word(ids) + position(pos) + segment(type)`` followed by LayerNorm and dropout.
    The segment table holds BERT's token types (sentence A / B) or, in
    single-stream models, modality types; ``type_vocab_size=0`` drops it and
    ``norm=False`` drops the LayerNorm (CLIP's text tower has neither). Names map
    from transformers' BERT: ``word_embeddings -> word``, ``position_embeddings ->
    position``, ``token_type_embeddings -> segment``, ``LayerNorm -> norm``.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        max_positions: int,
        type_vocab_size: int = 2,
        dropout: float = 0.0,
        eps: float = 1e-12,
        norm: bool = True,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.max_positions = max_positions
        self.type_vocab_size = type_vocab_size
        self.word = nn.Embedding(vocab_size, dim)
        self.position = nn.Embedding(max_positions, dim)
        self.segment = nn.Embedding(type_vocab_size, dim) if type_vocab_size > 0 else None
        self.norm = nn.LayerNorm(dim, eps=eps) if norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def _check(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> None:
        # nn.Embedding's own error ("index out of range in self"), or a device-side assert on GPU, names nothing.
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int):
            raise ValueError(f"input_ids: expected (B, L) integer ids, got {input_ids.dtype} {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.max_positions:
            raise ValueError(f"input_ids: length {input_ids.shape[1]} exceeds max_positions={self.max_positions}")
        if torch.compiler.is_compiling() or input_ids.numel() == 0:
            return
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= self.vocab_size:
            raise ValueError(f"input_ids: ids range over [{low}, {high}] but vocab_size is {self.vocab_size}")
        if token_type_ids is not None:
            if token_type_ids.shape != input_ids.shape:
                raise ValueError(
                    f"token_type_ids: shape {tuple(token_type_ids.shape)} differs from input_ids "
                    f"{tuple(input_ids.shape)}"
                )
            limit = max(self.type_vocab_size, 1)  # without a table only type 0 is meaningful
            if int(token_type_ids.min()) < 0 or int(token_type_ids.max()) >= limit:
                raise ValueError(
                    f"token_type_ids: values range over [{int(token_type_ids.min())}, {int(token_type_ids.max())}] "
                    f"but type_vocab_size is {self.type_vocab_size}"
                )

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ids ``(B, L)``, segment ids ``(B, L)`` (default 0), positions ``(L,)`` or ``(B, L)`` (default 0..L-1).

        ``inputs_embeds`` ``(B, L, D)``: word vectors used in place of ``word(input_ids)`` (prompt learning feeds
        learned context vectors this way, CoOp); positions and segments are still added.
        """
        self._check(input_ids, token_type_ids)
        length = input_ids.shape[1]
        if position_ids is None:
            position_ids = torch.arange(length, device=input_ids.device)
        expected = (*input_ids.shape, self.word.embedding_dim)
        if inputs_embeds is not None and tuple(inputs_embeds.shape) != expected:
            raise ValueError(f"inputs_embeds: expected {expected}, got {tuple(inputs_embeds.shape)}")
        words = lookup(self.word, input_ids) if inputs_embeds is None else inputs_embeds
        x = words + self.position(position_ids)
        if self.segment is not None:
            if token_type_ids is None:
                # segment 0 broadcast over the batch: one row lookup instead of a (B, L) zeros tensor
                x = x + self.segment.weight[0]
            else:
                x = x + self.segment(token_type_ids)
        return self.dropout(self.norm(x))
