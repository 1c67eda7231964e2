"""WordPiece training is reproducible: the same texts give the same vocabulary and ids in every
process, and the vocabulary is the one the BPE-style WordPiece algorithm learns with ties broken
in one fixed order (checked against a naive implementation written here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from vlp.text import Tokenizer
from vlp.text.tokenizer_files import SPECIALS

# Many equally frequent pairs and a dozen continuation characters: before training was made
# reproducible, two processes almost never agreed on these ids (nor always on the vocabulary).
CAPTIONS = [
    "a large red circle and a small purple star.",
    "a large green square and a small purple star.",
    "a large blue triangle.",
    "a large yellow diamond and a small purple star.",
]


def reference_vocab(words: Counter, vocab_size: int, min_frequency: int = 1) -> dict[str, int]:
    """Naive WordPiece training as BERT-style BPE: specials, the alphabet and the ``##`` alphabet
    (each sorted), then repeatedly merge the most frequent adjacent pair in every word (ties: the
    pair with the smallest ids), naming the result ``a + b`` without ``b``'s ``##``."""
    firsts = sorted({c for w in words for c in w})
    continuing = sorted({"##" + c for w in words for c in w[1:]})
    vocab = [*SPECIALS, *firsts, *continuing]
    ids = {tok: i for i, tok in enumerate(vocab)}
    pieces = {w: [ids[w[0]]] + [ids["##" + c] for c in w[1:]] for w in words}
    while len(vocab) < vocab_size:
        pairs: Counter = Counter()
        for word, seq in pieces.items():
            for pair in zip(seq, seq[1:]):
                pairs[pair] += words[word]
        if not pairs:
            break
        (a, b), count = min(pairs.items(), key=lambda item: (-item[1], item[0]))
        if count < min_frequency:
            break
        new = vocab[a] + vocab[b].removeprefix("##")
        if new not in ids:
            ids[new] = len(vocab)
            vocab.append(new)
        for word, seq in pieces.items():
            merged, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == (a, b):
                    merged.append(ids[new])
                    i += 2
                else:
                    merged.append(seq[i])
                    i += 1
            pieces[word] = merged
    return ids


@pytest.mark.parametrize(
    ("texts", "vocab_size", "min_frequency"),
    [
        (["red bed reds beds ted", "dog dot god got tog", "bog rob orb red dog"], 40, 1),
        (["red bed reds beds ted", "dog dot god got tog", "bog rob orb red dog"], 28, 1),  # stops amid ties
        (["dog dot god got tog dog", "bog rob orb red dog bed bed", "reds beds ted dot"], 60, 2),
        ([c.rstrip(".") for c in CAPTIONS], 1000, 1),
    ],
)
def test_training_is_the_wordpiece_algorithm_with_one_tie_order(texts, vocab_size, min_frequency) -> None:
    tok = Tokenizer.train(texts, vocab_size=vocab_size, min_frequency=min_frequency)
    words = Counter(w for t in texts for w in t.split())
    assert tok.get_vocab() == reference_vocab(words, vocab_size, min_frequency)


def test_vocabulary_layout_and_iterable_input() -> None:
    tok = Tokenizer.train(iter(CAPTIONS), vocab_size=1000)  # a one-shot iterator is read once
    assert tok.get_vocab() == Tokenizer.train(CAPTIONS, vocab_size=1000).get_vocab()
    tokens = tok.convert_ids_to_tokens(range(tok.vocab_size))
    assert tokens[:5] == list(SPECIALS)
    n_first = sum(len(t) == 1 for t in tokens)
    n_cont = sum(len(t) == 3 and t.startswith("##") for t in tokens)
    assert tokens[5 : 5 + n_first] == sorted(set("".join(CAPTIONS).replace(" ", "")))
    assert tokens[5 + n_first : 5 + n_first + n_cont] == sorted(tokens[5 + n_first : 5 + n_first + n_cont])
    # training pinned the alphabet with the trainer's special-token list; none of it may stay special
    assert tok.special_ids == {0, 1, 2, 3, 4}
    assert tok.decode(tok(["a large red star."]).input_ids[0]) == "a large red star."


SCRIPT = """
import json, sys
from vlp.text import Tokenizer
print(json.dumps(Tokenizer.train(json.loads(sys.argv[1]), vocab_size=1000).get_vocab(), sort_keys=True))
"""


@pytest.mark.slow
def test_two_processes_with_different_hash_seeds_learn_the_same_ids() -> None:
    procs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        cmd = [sys.executable, "-c", SCRIPT, json.dumps(CAPTIONS)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert results[0] == results[1]
    assert results[0] == Tokenizer.train(CAPTIONS, vocab_size=1000).get_vocab()  # and this process too
