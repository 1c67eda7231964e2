"""Caption metrics for a whole evaluation set: BLEU-1..4, METEOR, ROUGE-L, CIDEr(-D).

Two backends:

- ``pycocoevalcap`` (pip extra ``eval``): the official COCO caption code, with
  the Stanford PTBTokenizer and METEOR 1.5, both Java jars shipped inside the
  pip package (nothing is downloaded; SPICE, which does download models, is
  never used). Needs ``java`` on PATH.
- ``builtin``: :mod:`vlp.metrics.ptb_tokenize` + :mod:`~vlp.metrics.bleu`,
  :mod:`~vlp.metrics.rouge`, :mod:`~vlp.metrics.cider` in pure Python. No
  METEOR. On ordinary captions the numbers equal the official ones.

``auto`` uses pycocoevalcap when it imports and ``java`` is on PATH, else builtin.
Keys follow the COCO eval: ``Bleu_1 .. Bleu_4, METEOR, ROUGE_L, CIDEr``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
from collections.abc import Hashable, Mapping, Sequence

from vlp.metrics.bleu import corpus_bleu
from vlp.metrics.cider import cider_d
from vlp.metrics.ptb_tokenize import tokenize_captions
from vlp.metrics.rouge import rouge_l

BACKENDS = ("auto", "builtin", "pycocoevalcap")


def pycocoevalcap_available() -> bool:
    """True when pycocoevalcap imports and a ``java`` executable is on PATH."""
    return importlib.util.find_spec("pycocoevalcap") is not None and shutil.which("java") is not None


def resolve_backend(backend: str = "auto") -> str:
    """The backend :func:`caption_metrics` will use for ``backend`` (``builtin`` or ``pycocoevalcap``)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown caption-metric backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "pycocoevalcap" if pycocoevalcap_available() else "builtin"
    if backend == "pycocoevalcap" and not pycocoevalcap_available():
        missing = "pycocoevalcap (pip install 'vlp[eval]')" if shutil.which("java") else "a `java` executable on PATH"
        raise RuntimeError(f"caption backend 'pycocoevalcap' needs {missing}; use backend='builtin' instead")
    return backend


def _check_inputs(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
) -> tuple[list[str], list[list[str]]]:
    if not predictions:
        raise ValueError("caption_metrics needs at least one prediction")
    missing = [k for k in predictions if k not in references]
    extra = [k for k in references if k not in predictions]
    if missing or extra:
        detail = []
        if missing:
            detail.append(f"no references for ids {missing[:5]}")
        if extra:
            detail.append(f"no prediction for ids {extra[:5]}")
        raise ValueError("predictions and references must cover the same ids: " + "; ".join(detail))
    preds, refs = [], []
    for k in predictions:
        pred = predictions[k]
        if not isinstance(pred, str):
            raise TypeError(f"prediction for id {k!r} must be a string, got {type(pred).__name__}")
        ref = references[k]
        if isinstance(ref, str) or len(ref) == 0 or not all(isinstance(r, str) for r in ref):
            raise ValueError(f"references for id {k!r} must be a non-empty list of strings")
        preds.append(pred)
        refs.append(list(ref))
    return preds, refs


def _builtin(preds: list[str], refs: list[list[str]]) -> dict[str, float]:
    # tokenize in the order pycocoevalcap feeds its tokenizer (all references as one run of
    # lines, then all predictions), since PTB's sentence-end rule looks across line ends
    cands = tokenize_captions(preds)
    flat = tokenize_captions([c for r in refs for c in r])
    toks, start = [], 0
    for r in refs:
        toks.append(flat[start : start + len(r)])
        start += len(r)
    bleu, _ = corpus_bleu(cands, toks, 4)
    out = {f"Bleu_{k + 1}": float(b) for k, b in enumerate(bleu)}
    out["ROUGE_L"] = float(rouge_l(cands, toks)[0])
    out["CIDEr"] = float(cider_d(cands, toks)[0])
    return out


def _official(preds: list[str], refs: list[list[str]], meteor: bool) -> dict[str, float]:
    # import the scorers one by one: pycocoevalcap.eval would import SPICE as well
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # the official code keys by image id; use positions so any hashable id works
    gts = {i: [{"caption": c} for c in r] for i, r in enumerate(refs)}
    res = {i: [{"caption": p}] for i, p in enumerate(preds)}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    with contextlib.redirect_stdout(io.StringIO()):  # the BLEU scorer prints its internal counts
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"Bleu_{k + 1}": float(b) for k, b in enumerate(bleu)}
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            out["METEOR"] = float(scorer.compute_score(gts, res)[0])
        finally:
            del scorer  # its __del__ stops the Java process
    out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return out


def caption_metrics(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    backend: str = "auto",
    meteor: bool = True,
) -> dict[str, float]:
    """Score generated captions against human references.

    Args:
        predictions: item id -> generated caption (raw text).
        references: item id -> reference captions (raw text); same ids as
            ``predictions``.
        backend: ``auto`` | ``builtin`` | ``pycocoevalcap`` (see module docs;
            :func:`resolve_backend` tells which one ``auto`` picks).
        meteor: with pycocoevalcap, also run METEOR (a JVM loading a 60 MB
            paraphrase table: a few seconds).

    Returns:
        ``{"Bleu_1": ..., "Bleu_4": ..., "ROUGE_L": ..., "CIDEr": ...}`` plus
        ``"METEOR"`` with pycocoevalcap. BLEU/METEOR/ROUGE-L are in [0, 1],
        CIDEr-D in [0, 10].
    """
    chosen = resolve_backend(backend)
    preds, refs = _check_inputs(predictions, references)
    if chosen == "builtin":
        return _builtin(preds, refs)
    return _official(preds, refs, meteor)


__all__ = ["BACKENDS", "caption_metrics", "pycocoevalcap_available", "resolve_backend"]
