"""What the WordPiece and the CLIP BPE tokenizers share: what they return (a padded batch of ids,
:class:`TokenizedText`), the input rule that a batch of texts is a list of strings, and the
vocabulary side of a ``tokenizers`` backend (:class:`BackendTokenizer`)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import tokenizers
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


def pad_rows(rows: list[tuple[list[int], list[int], list[int]]], pad_to: int | None, pad_id: int) -> TokenizedText:
    """Right-pad rows of (ids, segment ids, word ids) to ``pad_to`` (or the longest row) with ``pad_id``,
    segment 0, word -1 and mask False."""
    length = pad_to if pad_to is not None else max((len(r[0]) for r in rows), default=0)
    # One tensor per field from padded lists: four small tensors per row cost more than the tokenizing.
    shape = (len(rows), length)
    ids = torch.tensor([r[0] + [pad_id] * (length - len(r[0])) for r in rows], dtype=torch.long).view(shape)
    types = torch.tensor([r[1] + [0] * (length - len(r[1])) for r in rows], dtype=torch.long).view(shape)
    words = torch.tensor([r[2] + [-1] * (length - len(r[2])) for r in rows], dtype=torch.long).view(shape)
    mask = torch.arange(length) < torch.tensor([len(r[0]) for r in rows], dtype=torch.long).view(-1, 1)
    return TokenizedText(ids, mask, types, words)


def text_list(texts: Any, name: str) -> list[str]:
    """``texts`` as a list of strings; a bare string is refused (it would be split into characters)."""
    if isinstance(texts, str):
        raise TypeError(f"{name}: expected a list of strings, got one string; wrap it in a list: [{texts[:30]!r}]")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}]: expected a string, got {type(text).__name__} {text!r:.60}")
    return texts


class BackendTokenizer:
    """What both tokenizers share over a ``tokenizers.Tokenizer`` backend: the vocabulary look-ups, id
    checks, batch decoding, and encoding under a lock (truncation is state on the backend, so setting
    it and encoding must not interleave between threads). Subclasses set ``_backend`` and ``_lock``
    and define ``decode`` and ``__call__``."""

    _backend: tokenizers.Tokenizer
    _lock: threading.Lock

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying ``tokenizers.Tokenizer`` (do not change its truncation; vlp sets it per call)."""
        return self._backend

    def get_vocab(self) -> dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    def normalize(self, text: str) -> str:
        """``text`` after the backend's normalization (e.g. BERT's cleaning, lowercasing, accent stripping)."""
        return self._backend.normalizer.normalize_str(text)

    def convert_ids_to_tokens(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        return [self._backend.id_to_token(i) for i in self._check_ids(ids)]

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special: bool = True) -> str:  # pragma: no cover
        raise NotImplementedError

    def batch_decode(self, ids: torch.Tensor | Sequence[Sequence[int]], skip_special: bool = True) -> list[str]:
        """Decode each row of a ``(B, L)`` id batch."""
        return [self.decode(row, skip_special) for row in ids]

    def _check_ids(self, ids: Sequence[int] | torch.Tensor) -> list[int]:
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(
                    f"expected a 1-D id sequence, got shape {tuple(ids.shape)}; use batch_decode for (B, L)"
                )
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        return ids

    def _encode(self, inputs: list, max_length: int, add_special_tokens: bool = True) -> list[tokenizers.Encoding]:
        with self._lock:
            # The same call transformers makes for truncation=True: longest_first, right side, no stride.
            self._backend.enable_truncation(max_length, stride=0, strategy="longest_first", direction="right")
            try:
                return self._backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
            finally:
                self._backend.no_truncation()
