"""BERT-style WordPiece tokenizer on the HF ``tokenizers`` library.

Text is represented as ``[CLS] w1 .. wn [SEP]`` (a pair as ``[CLS] A [SEP] B [SEP]``
with segment ids 0 / 1), the layout BERT-family vision-language models share.
Ids equal those of transformers' ``BertTokenizerFast`` on the same vocabulary,
including truncation (``longest_first``, keeping the final ``[SEP]``) and
padding (``[PAD]``, segment 0, mask False).

A *word* is a unit of BERT's pre-tokenizer: whitespace-separated text with each
punctuation mark split off ("dog's" is three words: ``dog ' s``), which is what
BERT's whole-word masking counts as a word.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import tokenizers
import torch

from vlp.text.bpe import ClipTokenizer, is_clip_tokenizer
from vlp.text.tokenized import BackendTokenizer, TokenizedText, pad_rows, text_list
from vlp.text.tokenizer_files import (
    CLS,
    MASK,
    PAD,
    SEP,
    SPECIALS,
    UNK,
    finish_backend,
    load_backend,
    save_backend,
)
from vlp.text.wordpiece_training import train_wordpiece

# Whole-string clean-up after decoding: the WordPiece decoder only sees one token at a time, so it cannot
# rejoin "don ' t"; these are the contractions transformers' clean-up rejoins.
_CLEANUP = ((" ' ", "'"), (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class Tokenizer(BackendTokenizer):
    """WordPiece tokenizer with BERT normalization (lowercase, optionally strip accents).

    Build one with :meth:`train` (from a caption corpus) or :meth:`load` (a
    transformers checkpoint folder, ``vocab.txt`` or ``tokenizer.json``); call it on
    a list of texts to get a :class:`TokenizedText`. Special-token ids are read
    from the vocabulary, never assumed. Safe to share between threads and to pickle
    into DataLoader workers.
    """

    def __init__(self, backend: tokenizers.Tokenizer) -> None:
        self._backend = finish_backend(backend, "tokenizer")
        self._lock = threading.Lock()  # truncation is state on the backend; set + encode must not interleave
        self._ids = {tok: self._backend.token_to_id(tok) for tok in SPECIALS}
        self._special_ids = frozenset(self._ids.values())

    # ----- construction -------------------------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 8000,
        min_frequency: int = 1,
        lowercase: bool = True,
        strip_accents: bool | None = None,
    ) -> Tokenizer:
        """Learn a WordPiece vocabulary of at most ``vocab_size`` tokens (specials included) from ``texts``.

        ``strip_accents=None`` strips accents exactly when lowercasing (BERT's rule). The same texts
        give the same vocabulary and ids in every process (:mod:`vlp.text.wordpiece_training`).
        """
        if vocab_size <= len(SPECIALS):
            raise ValueError(f"vocab_size={vocab_size}: must exceed the {len(SPECIALS)} special tokens")
        if min_frequency < 1:
            raise ValueError(f"min_frequency={min_frequency}: must be >= 1")
        corpus = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}]: expected a string, got {type(text).__name__}")
            corpus.append(text)  # kept: training reads the corpus twice (see wordpiece_training)
        backend = train_wordpiece(corpus, vocab_size, min_frequency, lowercase, strip_accents) if corpus else None
        if backend is None or backend.get_vocab_size() <= len(SPECIALS):
            raise ValueError("cannot train a tokenizer: the corpus has no text")
        return cls(backend)

    @classmethod
    def load(cls, path: str | Path, lowercase: bool | None = None) -> Tokenizer:
        """Load a checkpoint folder (``tokenizer.json`` preferred, else ``vocab.txt``; ``do_lower_case`` read from
        ``tokenizer_config.json``), a ``vocab.txt`` or a ``tokenizer.json``. ``lowercase`` overrides the files.

        Raises ``FileNotFoundError`` for a missing path and ``ValueError`` (naming the path and what was
        expected) for a file of the wrong kind. A CLIP BPE tokenizer (``vocab.json`` + ``merges.txt``, or a BPE
        ``tokenizer.json``) loads as a :class:`vlp.text.bpe.ClipTokenizer`, which has the same call interface.
        """
        if cls is Tokenizer and is_clip_tokenizer(path):
            return ClipTokenizer.load(path)  # type: ignore[return-value]
        return cls(load_backend(path, lowercase))

    def save(self, folder: str | Path) -> Path:
        """Write ``tokenizer.json``, ``vocab.txt`` and ``tokenizer_config.json`` (loadable by vlp and transformers)."""
        return save_backend(self._backend, folder)

    # ----- vocabulary -------------------------------------------------------------------------------------------
    @property
    def pad_id(self) -> int:
        return self._ids[PAD]

    @property
    def unk_id(self) -> int:
        return self._ids[UNK]

    @property
    def cls_id(self) -> int:
        return self._ids[CLS]

    @property
    def sep_id(self) -> int:
        return self._ids[SEP]

    @property
    def mask_id(self) -> int:
        return self._ids[MASK]

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (MLM never picks these as targets)."""
        return self._special_ids

    @property
    def lowercase(self) -> bool:
        return bool(getattr(self._backend.normalizer, "lowercase", False))

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        """Ids of ``tokens``; a token outside the vocabulary maps to ``[UNK]``."""
        out = []
        for tok in tokens:
            idx = self._backend.token_to_id(tok)
            out.append(self.unk_id if idx is None else idx)
        return out

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special: bool = True) -> str:
        """Rejoin word pieces (``##``) into text. ``skip_special`` drops ``[CLS] [SEP] [PAD] [MASK] [UNK]``.

        Punctuation is re-attached (" ." -> ".", " ' s" -> "'s", as transformers'
        ``clean_up_tokenization_spaces`` does), so a normalized caption round-trips;
        spaced-out hyphens and quotes ("a - b", "' x '") do not.
        """
        text = self._backend.decode(self._check_ids(ids), skip_special_tokens=skip_special)
        for spaced, joined in _CLEANUP:
            text = text.replace(spaced, joined)
        return text

    # ----- encoding ---------------------------------------------------------------------------------------------
    def __call__(
        self,
        texts: list[str],
        max_length: int = 40,
        padding: Literal["longest", "max_length"] = "longest",
        pair: list[str] | None = None,
    ) -> TokenizedText:
        """Tokenize ``texts`` (and, with ``pair``, second segments) into ``(B, L)`` tensors.

        ``L`` is the longest row (``padding="longest"``) or ``max_length``. Rows
        longer than ``max_length`` are truncated keeping the final ``[SEP]``.
        """
        texts = text_list(texts, "texts")
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding={padding!r}: expected 'longest' or 'max_length'")
        specials = 2 if pair is None else 3
        if max_length < specials + 1:
            raise ValueError(
                f"max_length={max_length}: must leave room for {specials} special tokens and one word piece"
            )
        inputs: list = texts
        if pair is not None:
            pair = text_list(pair, "pair")
            if len(pair) != len(texts):
                raise ValueError(f"pair has {len(pair)} texts but texts has {len(texts)}")
            inputs = list(zip(texts, pair))
        encodings = self._encode(inputs, max_length, add_special_tokens=True)
        rows = [(e.ids, e.type_ids, [-1 if w is None else w for w in e.word_ids]) for e in encodings]
        return pad_rows(rows, max_length if padding == "max_length" else None, self.pad_id)

    def encode_tags(
        self,
        tag_lists: list[list[str]],
        max_length: int = 20,
        padding: Literal["longest", "max_length"] = "longest",
    ) -> TokenizedText:
        """Tokenize OSCAR object tags: ``tag1 tag2 .. [SEP]`` with segment id 1, no ``[CLS]``.

        Following OSCAR, the tags of one image are joined by spaces into one text and
        form the second segment of ``[CLS] caption [SEP] tags [SEP]``, so this output
        is meant to be concatenated after a caption encoded by ``__call__``. Rows
        are truncated (token-wise, as OSCAR does) to ``max_length`` including the
        final ``[SEP]``; an image without tags still gets its ``[SEP]``, so every row
        has a kept token. ``word_ids`` count the words of the joined tag text.
        """
        if isinstance(tag_lists, str):
            raise TypeError("tag_lists: expected a list of tag lists, got one string")
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding={padding!r}: expected 'longest' or 'max_length'")
        if max_length < 2:
            raise ValueError(f"max_length={max_length}: must leave room for [SEP] and one word piece")
        joined = [" ".join(text_list(tags, f"tag_lists[{i}]")) for i, tags in enumerate(tag_lists)]
        encodings = self._encode(joined, max_length - 1, add_special_tokens=False)
        rows = [
            (e.ids + [self.sep_id], [1] * (len(e.ids) + 1), [-1 if w is None else w for w in e.word_ids] + [-1])
            for e in encodings
        ]
        return pad_rows(rows, max_length if padding == "max_length" else None, self.pad_id)

    # ----- pickling (DataLoader workers) --------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, str]:
        return {"backend": self._backend.to_str()}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.__init__(tokenizers.Tokenizer.from_str(state["backend"]))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase})"
