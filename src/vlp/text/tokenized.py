"""What every tokenizer returns: a padded batch of ids (:class:`TokenizedText`), and the input rule
that a batch of texts is a list of strings. Shared by the WordPiece and the CLIP BPE tokenizers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class TokenizedText:
    """A padded batch of token ids; every field is ``(B, L)``.

    ``input_ids`` long; ``attention_mask`` bool (True = real token, False = padding);
    ``token_type_ids`` long segment ids; ``word_ids`` long: index of the word each
    sub-word belongs to within its own sentence (a pair restarts at 0 for the
    second sentence), -1 for ``[CLS]``, ``[SEP]`` and ``[PAD]``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    word_ids: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> TokenizedText:
        return TokenizedText(*(t.to(device) for t in self._fields()))

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return (self.input_ids, self.attention_mask, self.token_type_ids, self.word_ids)


def text_list(texts: Any, name: str) -> list[str]:
    """``texts`` as a list of strings; a bare string is refused (it would be split into characters)."""
    if isinstance(texts, str):
        raise TypeError(f"{name}: expected a list of strings, got one string; wrap it in a list: [{texts[:30]!r}]")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}]: expected a string, got {type(text).__name__} {text!r:.60}")
    return texts
