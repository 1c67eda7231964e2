"""Reading and writing BERT-style WordPiece tokenizer files.

Three inputs are accepted, the same ones transformers' ``BertTokenizerFast``
reads: a ``tokenizer.json`` written by the ``tokenizers`` library, a ``vocab.txt``
(one WordPiece token per line, the line number is the id), or a checkpoint
folder holding either (``tokenizer.json`` preferred), optionally next to a
``tokenizer_config.json`` whose ``do_lower_case``/``strip_accents`` win over the
normalizer stored in ``tokenizer.json`` (transformers applies them the same way).

Every file of the wrong kind raises ``ValueError`` naming the path and what was
expected, so a mistyped ``--tokenizer`` never turns into a puzzling shape error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
EXPECTED = "a tokenizer.json (tokenizers library, WordPiece model), a vocab.txt, or a folder holding one of them"


def _read_text(path: Path, what: str) -> str:
    """UTF-8 text of ``path``; binaries and undecodable files are a ``ValueError`` naming the path."""
    data = path.read_bytes()
    if b"\x00" in data:
        raise ValueError(f"{path}: is a binary file, not a {what}; expected {EXPECTED}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: is not UTF-8 text ({err.reason} at byte {err.start}); expected a {what}") from err


def _check_specials(backend: tokenizers.Tokenizer, path: Path | str) -> None:
    missing = [tok for tok in SPECIALS if backend.token_to_id(tok) is None]
    if missing:
        raise ValueError(
            f"{path}: vocabulary lacks the special tokens {', '.join(missing)}; "
            f"a BERT-style vocab needs all of {' '.join(SPECIALS)}"
        )


def set_bert_post_processor(backend: tokenizers.Tokenizer) -> None:
    """``[CLS] A [SEP]`` and ``[CLS] A [SEP] B [SEP]`` with segment ids 0 / 1; ids read from the vocab."""
    cls_id, sep_id = backend.token_to_id(CLS), backend.token_to_id(SEP)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )


def bert_normalizer(lowercase: bool, strip_accents: bool | None, chinese_chars: bool = True) -> normalizers.Normalizer:
    """BERT's normalizer: clean control chars, space out CJK, lowercase; ``strip_accents=None`` follows lowercase."""
    return normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=chinese_chars, strip_accents=strip_accents, lowercase=lowercase
    )


def bert_backend(model: models.WordPiece, lowercase: bool, strip_accents: bool | None) -> tokenizers.Tokenizer:
    """A ``tokenizers.Tokenizer`` with BERT's normalizer, pre-tokenizer and WordPiece decoder around ``model``."""
    backend = tokenizers.Tokenizer(model)
    backend.normalizer = bert_normalizer(lowercase, strip_accents)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return backend


def finish_backend(backend: tokenizers.Tokenizer, path: Path | str) -> tokenizers.Tokenizer:
    """Make the specials unsplittable, set the BERT template and drop stored padding/truncation.

    A ``tokenizer.json`` may carry a fixed padding/truncation (MiniLM's pads every
    text to 128); vlp pads and truncates per call, so the stored setting is dropped.
    """
    _check_specials(backend, path)
    # Registered as special added tokens so that "[MASK]" typed in a text stays one token, as in transformers.
    backend.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in SPECIALS])
    set_bert_post_processor(backend)
    backend.no_padding()
    backend.no_truncation()
    return backend


def backend_from_vocab(path: Path, lowercase: bool = True, strip_accents: bool | None = None) -> tokenizers.Tokenizer:
    """Build the tokenizer of a ``vocab.txt``: token on line i has id i (transformers' rule)."""
    text = _read_text(path, "vocab.txt")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last token does not start a new one
    if not any(line.strip() for line in lines):
        raise ValueError(f"{path}: empty vocab; expected one WordPiece token per line, including {' '.join(SPECIALS)}")
    vocab: dict[str, int] = {}
    for index, token in enumerate(lines):
        if token in vocab:
            # transformers would silently let the later line win and leave a hole in the ids
            raise ValueError(f"{path}: token {token!r} appears on lines {vocab[token] + 1} and {index + 1}")
        vocab[token] = index
    backend = bert_backend(
        models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=100), lowercase, strip_accents
    )
    return finish_backend(backend, path)


def backend_from_json(
    path: Path, lowercase: bool | None = None, strip_accents: bool | None = None
) -> tokenizers.Tokenizer:
    """Read a ``tokenizer.json``; ``lowercase``/``strip_accents`` (when given) override its BertNormalizer."""
    text = _read_text(path, "tokenizer.json")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: is not valid JSON ({err}); expected a tokenizer.json of the tokenizers library"
        ) from err
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError(
            f"{path}: JSON without a 'model' section, so not a tokenizers tokenizer.json "
            "(tokenizer_config.json and config.json are settings, not tokenizers)"
        )
    try:
        backend = tokenizers.Tokenizer.from_str(text)
    except Exception as err:  # the Rust side raises a bare Exception
        raise ValueError(f"{path}: the tokenizers library cannot read it ({err})") from err
    if not isinstance(backend.model, models.WordPiece):
        raise ValueError(
            f"{path}: tokenizer model is {type(backend.model).__name__}; "
            "vlp's Tokenizer expects a WordPiece (BERT-style) tokenizer"
        )
    current = backend.normalizer
    if isinstance(current, normalizers.BertNormalizer) and (lowercase is not None or strip_accents is not None):
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=current.clean_text,
            handle_chinese_chars=current.handle_chinese_chars,
            strip_accents=strip_accents if strip_accents is not None else current.strip_accents,
            lowercase=lowercase if lowercase is not None else current.lowercase,
        )
    return finish_backend(backend, path)


def read_tokenizer_config(path: Path) -> dict[str, Any]:
    """``tokenizer_config.json`` as a dict; ``{}`` when absent."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(_read_text(path, "tokenizer_config.json"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of tokenizer settings, got {type(data).__name__}")
    for key in ("do_lower_case", "strip_accents"):
        if data.get(key) is not None and not isinstance(data[key], bool):
            raise ValueError(f"{path}: {key} must be true, false or null, got {data[key]!r}")
    return data


def load_backend(path: str | Path, lowercase: bool | None = None) -> tokenizers.Tokenizer:
    """The ``tokenizers.Tokenizer`` behind a tokenizer folder, ``tokenizer.json`` or ``vocab.txt``.

    ``lowercase`` (when not None) overrides ``do_lower_case`` of the files.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such tokenizer file or folder; expected {EXPECTED}")
    if path.is_dir():
        settings = read_tokenizer_config(path / "tokenizer_config.json")
        lower = lowercase if lowercase is not None else settings.get("do_lower_case")
        strip = settings.get("strip_accents")
        if (path / "tokenizer.json").is_file():
            return backend_from_json(path / "tokenizer.json", lower, strip)
        if (path / "vocab.txt").is_file():
            return backend_from_vocab(path / "vocab.txt", True if lower is None else lower, strip)
        raise ValueError(f"{path}: folder holds neither tokenizer.json nor vocab.txt; expected {EXPECTED}")
    with path.open("rb") as handle:
        head = handle.read(64).lstrip()
    # Sniff the content, not the suffix: a tokenizer.json saved under another name is still JSON.
    if path.suffix == ".json" or head.startswith(b"{"):
        return backend_from_json(path, lowercase)
    return backend_from_vocab(path, True if lowercase is None else lowercase)


def save_backend(backend: tokenizers.Tokenizer, folder: str | Path) -> Path:
    """Write ``tokenizer.json``, ``vocab.txt``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

    The folder loads in vlp and in transformers' ``BertTokenizerFast`` (both files
    are written so that readers that only know ``vocab.txt`` work too).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = backend.get_vocab(with_added_tokens=True)
    by_id = sorted(vocab.items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ValueError(f"cannot write {folder / 'vocab.txt'}: token ids are not contiguous from 0")
    bad = [tok for tok, _ in by_id if "\n" in tok or "\r" in tok]
    if bad:
        raise ValueError(f"cannot write {folder / 'vocab.txt'}: tokens contain line breaks: {bad[:5]}")
    clean = tokenizers.Tokenizer.from_str(backend.to_str())
    clean.no_padding()
    clean.no_truncation()
    clean.save(str(folder / "tokenizer.json"))
    (folder / "vocab.txt").write_text("".join(tok + "\n" for tok, _ in by_id), encoding="utf-8")
    norm = backend.normalizer
    is_bert = isinstance(norm, normalizers.BertNormalizer)
    specials = {"unk_token": UNK, "sep_token": SEP, "pad_token": PAD, "cls_token": CLS, "mask_token": MASK}
    settings = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": bool(norm.lowercase) if is_bert else True,
        "strip_accents": norm.strip_accents if is_bert else None,
        "tokenize_chinese_chars": bool(norm.handle_chinese_chars) if is_bert else True,
        **specials,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")
    return folder
