"""CLIP's byte-level BPE tokenizer on the HF ``tokenizers`` library.

Text is normalized as CLIP's tokenizer does (Unicode NFC, every whitespace run -> one space,
lowercase), split into letter runs, single digits, punctuation runs and the contractions
``'s 't 're 've 'm 'll 'd``, mapped to bytes, and merged by the BPE rules of ``merges.txt``;
the last piece of every word carries the ``</w>`` suffix. A text becomes
``<|startoftext|> pieces <|endoftext|>``, truncated to ``max_length`` (77 by default) keeping
the end token, and padded with the pad token (``<|endoftext|>`` unless ``tokenizer_config.json``
names another). Ids equal transformers' ``CLIPTokenizerFast`` on the same files.

The call interface is that of :class:`vlp.text.Tokenizer` (``__call__`` -> :class:`TokenizedText`,
``decode``, ``save``, ``load``), so data pipelines and models take either.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import tokenizers
import torch
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors

from vlp.text.tokenized import BackendTokenizer, TokenizedText, pad_rows, text_list

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
WORD_END = "</w>"
# CLIP's pre-tokenizer: specials, contractions, letter runs, single digits, other non-space runs
PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
EXPECTED = "a CLIP tokenizer folder (vocab.json + merges.txt, or tokenizer.json with a BPE model)"


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: is not valid JSON ({err}); expected {what}") from err


def _merges_of(lines: Sequence[Any], path: Path) -> list[tuple[str, str]]:
    merges = []
    for i, line in enumerate(lines):
        pair = line.split(" ") if isinstance(line, str) else list(line)
        if len(pair) != 2:
            raise ValueError(f"{path}: merge {i + 1} is {line!r}; expected two space-separated pieces")
        merges.append((pair[0], pair[1]))
    return merges


def _token_name(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def is_clip_tokenizer(path: str | Path) -> bool:
    """Whether ``path`` (folder or file) holds a CLIP-style BPE tokenizer rather than a WordPiece one."""
    path = Path(path)
    if path.is_dir():
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return True
        path = path / "tokenizer.json"
    if not path.is_file() or path.suffix != ".json":
        return False
    try:
        model = json.loads(path.read_text(encoding="utf-8")).get("model", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
    return isinstance(model, dict) and model.get("type") == "BPE" and EOT in (model.get("vocab") or {})


def clip_backend(vocab: dict[str, int], merges: list[tuple[str, str]], where: str | Path) -> tokenizers.Tokenizer:
    """The ``tokenizers.Tokenizer`` of CLIP's pipeline around a BPE ``vocab`` and ``merges``."""
    missing = [tok for tok in (SOT, EOT) if tok not in vocab]
    if missing:
        raise ValueError(f"{where}: vocabulary lacks {', '.join(missing)}; expected {EXPECTED}")
    model = models.BPE(
        vocab=vocab,
        merges=merges,
        continuing_subword_prefix="",
        end_of_word_suffix=WORD_END,
        fuse_unk=False,
        unk_token=EOT,
    )
    backend = tokenizers.Tokenizer(model)
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (SOT, EOT)])
    backend.post_processor = processors.RobertaProcessing(
        (EOT, vocab[EOT]), (SOT, vocab[SOT]), trim_offsets=False, add_prefix_space=False
    )
    return backend


class ClipTokenizer(BackendTokenizer):
    """CLIP BPE tokenizer: ``tok(texts) -> TokenizedText`` with ``(B, 77)`` tensors by default.

    Build one with :meth:`load` (a CLIP checkpoint folder, ``tokenizer.json``) or
    :meth:`from_files` (``vocab.json`` + ``merges.txt``). Safe to share between threads and to
    pickle into DataLoader workers.
    """

    def __init__(
        self, vocab: dict[str, int], merges: list[tuple[str, str]], pad_token: str = EOT, source: str | Path = "vocab"
    ) -> None:
        self._vocab, self._merges = dict(vocab), list(merges)
        self._backend = clip_backend(self._vocab, self._merges, source)
        if pad_token not in self._vocab:
            raise ValueError(f"{source}: pad token {pad_token!r} is not in the vocabulary")
        self._pad_token = pad_token
        self._lock = threading.Lock()  # truncation is state on the backend

    # ----- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_files(cls, vocab_json: str | Path, merges_txt: str | Path, pad_token: str = EOT) -> ClipTokenizer:
        vocab_json, merges_txt = Path(vocab_json), Path(merges_txt)
        vocab = _read_json(vocab_json, "a BPE vocab.json (token -> id)")
        if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
            raise ValueError(f"{vocab_json}: expected a JSON object of token -> integer id")
        lines = merges_txt.read_text(encoding="utf-8").splitlines()
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        return cls(vocab, _merges_of([ln for ln in lines if ln], merges_txt), pad_token, vocab_json)

    @classmethod
    def load(cls, path: str | Path) -> ClipTokenizer:
        """Load a folder (``vocab.json`` + ``merges.txt`` preferred, else ``tokenizer.json``; the pad token is
        read from ``tokenizer_config.json``) or a ``tokenizer.json`` file."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such tokenizer file or folder; expected {EXPECTED}")
        pad = EOT
        if path.is_dir():
            config_path = path / "tokenizer_config.json"
            if config_path.is_file():
                pad = _token_name(_read_json(config_path, "tokenizer settings").get("pad_token")) or EOT
            if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
                return cls.from_files(path / "vocab.json", path / "merges.txt", pad)
            path = path / "tokenizer.json"
            if not path.is_file():
                raise ValueError(
                    f"{path.parent}: holds neither vocab.json + merges.txt nor tokenizer.json; expected {EXPECTED}"
                )
        data = _read_json(path, EXPECTED)
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(model, dict) or model.get("type") != "BPE":
            kind = model.get("type") if isinstance(model, dict) else None
            raise ValueError(f"{path}: tokenizer model is {kind!r}; expected {EXPECTED}")
        return cls(dict(model["vocab"]), _merges_of(model.get("merges", []), path), pad, path)

    def save(self, folder: str | Path) -> Path:
        """Write ``vocab.json``, ``merges.txt``, ``tokenizer.json`` and the settings transformers reads."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.json").write_text(json.dumps(self._vocab, ensure_ascii=False), encoding="utf-8")
        merges = "".join(f"{a} {b}\n" for a, b in self._merges)
        (folder / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")
        self._backend.save(str(folder / "tokenizer.json"))
        specials = {"bos_token": SOT, "eos_token": EOT, "unk_token": EOT, "pad_token": self._pad_token}
        settings = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **specials}
        (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")
        return folder

    # ----- vocabulary -------------------------------------------------------------------------------------------
    @property
    def bos_id(self) -> int:
        return self._vocab[SOT]

    @property
    def eos_id(self) -> int:
        return self._vocab[EOT]

    cls_id = bos_id  # the [CLS] / [SEP] roles of vlp's WordPiece tokenizer
    sep_id = eos_id

    @property
    def pad_id(self) -> int:
        return self._vocab[self._pad_token]

    @property
    def unk_id(self) -> int:
        return self._vocab[EOT]

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset({self.bos_id, self.eos_id, self.pad_id})

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return [self._vocab.get(tok, self.unk_id) for tok in tokens]

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special: bool = True) -> str:
        """Text of ``ids``: bytes rejoined, each ``</w>`` read as a space (CLIP's rule)."""
        text = self._backend.decode(self._check_ids(ids), skip_special_tokens=skip_special)
        return text.replace(WORD_END, " ").strip()

    # ----- encoding ---------------------------------------------------------------------------------------------
    def __call__(
        self,
        texts: list[str],
        max_length: int = 77,
        padding: Literal["longest", "max_length"] = "max_length",
        pair: list[str] | None = None,
    ) -> TokenizedText:
        """Tokenize ``texts`` into ``(B, L)`` tensors; ``L`` is ``max_length`` (CLIP's fixed context) or the
        longest row. Rows longer than ``max_length`` are cut, keeping ``<|endoftext|>`` last."""
        texts = text_list(texts, "texts")
        if pair is not None:
            raise ValueError("CLIP's tokenizer encodes single texts; pair is not supported")
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding={padding!r}: expected 'longest' or 'max_length'")
        if max_length < 3:
            raise ValueError(f"max_length={max_length}: must leave room for the 2 special tokens and one piece")
        encodings = self._encode(texts, max_length)
        rows = [(e.ids, [0] * len(e.ids), [-1 if w is None else w for w in e.word_ids]) for e in encodings]
        return pad_rows(rows, max_length if padding == "max_length" else None, self.pad_id)

    # ----- pickling -----------------------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"vocab": self._vocab, "merges": self._merges, "pad": self._pad_token}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["vocab"], state["merges"], state["pad"])

    def __repr__(self) -> str:
        return f"ClipTokenizer(vocab_size={self.vocab_size}, pad={self._pad_token!r})"


__all__ = ["ClipTokenizer", "clip_backend", "is_clip_tokenizer"]
