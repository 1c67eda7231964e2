"""VQAv2: ``v2_OpenEnded_mscoco_{subtype}_questions.json`` + ``v2_mscoco_{subtype}_annotations.json``.

Questions: ``{"data_subtype": "train2014", "questions": [{"image_id",
"question", "question_id"}]}``. Annotations (absent for test-dev/test):
``{"annotations": [{"question_id", "image_id", "question_type", "answer_type",
"multiple_choice_answer", "answers": [10 x {"answer", "answer_confidence",
"answer_id"}]}]}``. Images are found with ``image_template``, by default COCO's
``COCO_{data_subtype}_{image_id:012d}.jpg`` inside the images folder.

Answer vocabulary: the ``top_k`` most frequent ``multiple_choice_answer`` of the
*training* annotations (ties broken alphabetically so it is reproducible; answers
seen fewer than ``min_count`` times left out), saved as JSON ``{"answers": [...],
"built_from": {...}}``: ``built_from`` records what it was built from (top_k,
min_count, the normalizer, each annotation file's path, size and mtime), so a
cached vocabulary is rebuilt when any of them changes. A vocabulary file without
``built_from`` (``{"answers": [...]}`` or a bare list) is a user's own and is
used as given, never overwritten.

Soft targets (``soft_score``):
- ``official`` (default): the expected official VQA accuracy of predicting the
  answer, i.e. the average over the 10 leave-one-out subsets of the human
  answers of min(1, matches / 3). For 10 answers and c matches this is 0, 0.3,
  0.6, 0.9, 1.0 for c = 0, 1, 2, 3, >= 4 — the table bottom-up attention and
  ViLT train with.
- ``min3``: min(1, c / 3) (Teney et al., "Tips and tricks for VQA").
Answers are normalized before counting by the ``normalize`` hook; by default the
official VQA normalization from :mod:`vlp.metrics.vqa` (punctuation, number
words, articles, contractions), so training targets and evaluation agree.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from vlp.config import ConfigError
from vlp.data.skipping import Skipped, reject
from vlp.data.sources.common import SourceIndex, check_text, expect, read_json

SoftScore = Literal["official", "min3"]
COCO_TEMPLATE = "COCO_{data_subtype}_{image_id:012d}.jpg"


def basic_normalize(answer: str) -> str:
    """Lower-case and collapse whitespace (the fallback when vlp.metrics is unavailable)."""
    return " ".join(answer.lower().split())


def default_answer_normalizer() -> Callable[[str], str]:
    """The official VQA answer normalization from :mod:`vlp.metrics.vqa`, else :func:`basic_normalize`."""
    try:
        from vlp.metrics.vqa import normalize_answer
    except ImportError:
        return basic_normalize
    return normalize_answer


def soft_score(count: int, num_answers: int = 10, method: SoftScore = "official") -> float:
    """Training target of an answer given by ``count`` of ``num_answers`` annotators (see module docstring)."""
    if not 0 <= count <= num_answers or num_answers < 1:
        raise ValueError(f"need 0 <= count <= num_answers and num_answers >= 1, got {count}, {num_answers}")
    if method == "min3":
        return min(1.0, count / 3.0)
    if method != "official":
        raise ValueError(f"soft_score method must be 'official' or 'min3', got {method!r}")
    left_out_match = count * min(1.0, (count - 1) / 3.0) if count else 0.0
    left_out_other = (num_answers - count) * min(1.0, count / 3.0)
    return (left_out_match + left_out_other) / num_answers


def build_answer_vocab(
    annotations: Iterable[dict[str, Any]],
    top_k: int = 3129,
    normalize: Callable[[str], str] = basic_normalize,
    min_count: int = 1,
) -> list[str]:
    """The ``top_k`` most frequent (normalized) ``multiple_choice_answer``s seen at least ``min_count``
    times, most frequent first."""
    counts = Counter(
        normalize(a["multiple_choice_answer"])
        for a in annotations
        if isinstance(a, dict) and isinstance(a.get("multiple_choice_answer"), str)
    )
    ranked = sorted(((a, c) for a, c in counts.items() if c >= min_count), key=lambda kv: (-kv[1], kv[0]))
    return [answer for answer, _ in ranked[:top_k] if answer]


def vocab_key(sources: list[Path], top_k: int, min_count: int, normalize: Callable[[str], str]) -> dict[str, Any]:
    """What a vocabulary is built from: a cached one with another key is stale."""
    files = []
    for source in sources:
        stat = source.stat()
        files.append({"path": str(source.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    name = f"{getattr(normalize, '__module__', '?')}.{getattr(normalize, '__qualname__', type(normalize).__name__)}"
    return {"top_k": top_k, "min_count": min_count, "normalizer": name, "annotations": files}


def save_answer_vocab(path: Path, answers: list[str], built_from: dict[str, Any] | None = None) -> None:
    """Write ``{"answers": [...]}`` (plus ``built_from`` for a cache vlp may rebuild) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    data: dict[str, Any] = {"answers": answers} | ({"built_from": built_from} if built_from is not None else {})
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=0), encoding="utf-8")
    tmp.replace(path)  # atomic: several ranks may build the same vocabulary at once


def read_answer_vocab(path: Path) -> tuple[list[str], dict[str, Any] | None]:
    """The answers of a vocabulary file and its ``built_from`` key (None: a file vlp did not build)."""
    data = read_json(path, "answer_vocab")
    answers = data.get("answers") if isinstance(data, dict) else data
    expect(
        isinstance(answers, list) and all(isinstance(a, str) for a in answers),
        path,
        'expected an answer vocabulary: {"answers": [str, ...]} or a JSON list of strings',
    )
    built_from = data.get("built_from") if isinstance(data, dict) else None
    return answers, built_from if isinstance(built_from, dict) else None


def read_annotations(path: Path) -> list[dict[str, Any]]:
    data = read_json(path, "annotations")
    expect(
        isinstance(data, dict) and isinstance(data.get("annotations"), list),
        path,
        'expected VQAv2 annotations: {"annotations": [{"question_id", "answers": [...]}]}',
    )
    return data["annotations"]


def read_vqav2(
    questions: Path,
    images_dir: Path,
    annotations: Path | None = None,
    answer_vocab: list[str] | None = None,
    image_template: str = COCO_TEMPLATE,
    soft: SoftScore = "official",
    normalize: Callable[[str], str] | None = None,
    max_chars: int = 2000,
    strict: bool = False,
) -> SourceIndex:
    """One record per question: image path, question, normalized human answers and soft targets.

    ``record["targets"]`` maps answer-vocabulary index -> soft score (answers
    outside the vocabulary get no target, as in every VQAv2 classifier).
    """
    normalize = normalize or default_answer_normalizer()
    data = read_json(questions, "questions")
    expect(
        isinstance(data, dict) and isinstance(data.get("questions"), list),
        questions,
        'expected VQAv2 questions: {"data_subtype": ..., "questions": [{"image_id", "question", "question_id"}]}',
    )
    subtype = str(data.get("data_subtype", ""))
    by_question: dict[Any, dict[str, Any]] = {}
    if annotations is not None:
        by_question = {a.get("question_id"): a for a in read_annotations(annotations) if isinstance(a, dict)}
    vocab_index = {a: i for i, a in enumerate(answer_vocab or [])}
    skips: list[Skipped] = []
    records = []
    for i, q in enumerate(data["questions"]):
        source = f"{questions}[questions][{i}]"
        if not isinstance(q, dict) or "image_id" not in q or "question_id" not in q:
            skips.append(reject("missing_field", source, "needs image_id, question_id and question", strict))
            continue
        question = check_text(q.get("question"), source, max_chars, strict, "question")
        if isinstance(question, Skipped):
            skips.append(question)
            continue
        try:
            image = images_dir / image_template.format(image_id=q["image_id"], data_subtype=subtype)
        except (KeyError, ValueError, IndexError) as err:
            raise ConfigError(
                f"data.options.image_template {image_template!r}: {err} (fields: image_id, data_subtype)"
            ) from err
        record: dict[str, Any] = {
            "image": str(image), "image_id": q["image_id"], "question": question, "question_id": q["question_id"],
        }  # fmt: skip
        if annotations is not None:
            ann = by_question.get(q["question_id"])
            if ann is None or not isinstance(ann.get("answers"), list):
                skips.append(reject("missing_field", source, f"no annotation for question {q['question_id']}", strict))
                continue
            answers = [normalize(str(a.get("answer", ""))) for a in ann["answers"] if isinstance(a, dict)]
            counts = Counter(answers)
            record["answers"] = answers
            record["answer_type"] = ann.get("answer_type", "")
            record["question_type"] = ann.get("question_type", "")
            record["targets"] = {
                vocab_index[a]: soft_score(c, len(answers), soft) for a, c in counts.items() if a in vocab_index
            }
        records.append(record)
    index = SourceIndex(records, skips)
    index.extras["answer_vocab"] = list(answer_vocab or [])
    return index
