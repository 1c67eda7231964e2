"""Reproducible WordPiece training on the HF ``tokenizers`` trainer.

The ``tokenizers`` WordPiece trainer (a BPE trainer underneath) is not reproducible across
processes: it gives the continuation alphabet (``##a``, ``##b``, ...) ids in the iteration order
of a Rust ``HashMap``, whose seed is random per process, and it breaks ties between equally
frequent merges by those ids. The same captions can therefore yield different ids, and even a
different vocabulary (a tie decides which of two pieces is learnt before the size limit).

Everything else in the trainer is deterministic: specials come first, then the alphabet sorted
by code point, then the merges, each the most frequent pair (ties to the smallest pair of ids).
So training runs twice here: a first pass with no merges reads the alphabet and the
continuation alphabet; the second pass passes both, sorted, after the specials as the
trainer's "special tokens", which pins their ids before the trainer would number them. The
result is exactly what the trainer gives in a process whose hash order happens to be sorted:
the same algorithm, with one fixed tie order.
"""

from __future__ import annotations

import tokenizers
from tokenizers import models, trainers

from vlp.text.tokenizer_files import SPECIALS, UNK, bert_backend

PREFIX = "##"  # BERT's continuing-subword prefix


def _alphabets(texts: list[str], lowercase: bool, strip_accents: bool | None) -> tuple[list[str], list[str]]:
    """The characters that start a word and the ``##`` pieces that continue one, each sorted by code point."""
    backend = bert_backend(models.WordPiece(unk_token=UNK), lowercase, strip_accents)
    # vocab_size=1: the trainer stops before the first merge, after numbering both alphabets
    trainer = trainers.WordPieceTrainer(
        vocab_size=1, special_tokens=list(SPECIALS), continuing_subword_prefix=PREFIX, show_progress=False
    )
    backend.train_from_iterator(texts, trainer=trainer)
    found = [tok for tok in backend.get_vocab(with_added_tokens=False) if tok not in SPECIALS]
    # Before any merge a token is one character, or the prefix and one character. A '#' in the text is
    # always a word of its own (BERT splits punctuation off), so a one-character token is never '##x'.
    chars = sorted(tok for tok in found if len(tok) == 1)
    continuing = sorted(tok for tok in found if len(tok) > 1)
    return chars, continuing


def train_wordpiece(
    texts: list[str], vocab_size: int, min_frequency: int, lowercase: bool, strip_accents: bool | None
) -> tokenizers.Tokenizer:
    """A BERT-style backend with a WordPiece vocabulary learnt from ``texts``, the same in every process.

    Ids: the specials ``[PAD] [UNK] [CLS] [SEP] [MASK]`` as 0-4, the alphabet, the ``##``
    alphabet, then the learnt pieces in the order they were merged. The returned backend has no
    added tokens yet (:func:`vlp.text.tokenizer_files.finish_backend` registers the specials).
    """
    chars, continuing = _alphabets(texts, lowercase, strip_accents)
    backend = bert_backend(models.WordPiece(unk_token=UNK), lowercase, strip_accents)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[*SPECIALS, *chars, *continuing],
        continuing_subword_prefix=PREFIX,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    # The trainer made every pinned character an added (special) token of this backend, which would
    # match it anywhere in a text and drop it when decoding: keep only the learnt vocabulary.
    vocab = backend.get_vocab(with_added_tokens=False)
    return bert_backend(models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=100), lowercase, strip_accents)
