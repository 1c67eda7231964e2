"""VQA evaluation: the official VQA accuracy, overall and per answer / question type, with the
question-blind prior as chance."""

from __future__ import annotations

from typing import Any

import torch

from vlp.config import ConfigError
from vlp.data.config import DataConfig
from vlp.metrics.vqa import answer_prior, vqa_score
from vlp.tasks.common import build_eval_dataset, iterate_batches, model_data_config
from vlp.tasks.vqa.decode import check_generative, generate_answers, rank_answers
from vlp.tasks.vqa.head import answer_logits, dataset_vocab, default_decode_options, resolve_method


def evaluate(
    model: Any,
    tokenizer: Any,
    data: Any,
    *,
    split: str = "test",
    method: str = "auto",
    answer_vocab: list[str] | None = None,
    style: str = "prefix",
    options: Any = None,
    batch_size: int = 64,
    device: Any = None,
    num_workers: int = 0,
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Official VQA accuracy of ``model`` on ``data`` (percent).

    ``method``: ``classify`` (arg-max of the vqa head over ``answer_vocab``), ``generate`` (decode
    with ``options``, a :class:`~vlp.tasks.decoding.DecodeOptions`), ``rank`` (the decoder's
    most likely answer of ``answer_vocab``) or ``auto`` (classify when the model has a vqa head).
    ``answer_vocab`` defaults to the dataset's. ``data``: a DataConfig or a dataset of VQA samples
    whose meta holds ``answers`` (and ``answer_type``, ``question_type``, ``question_id``).

    Returns ``overall``, ``per_answer_type``, ``per_question_type``, ``n_questions``, ``n_skipped``, ``method``,
    ``chance`` (``overall`` and ``per_answer_type`` of the prior) and, with ``keep_predictions``,
    ``predictions``: ``[{"question_id", "answer"}]`` (VQA's results format).
    """
    method = resolve_method(model, method)
    options = options or default_decode_options()
    device = device if device is not None else next(model.parameters()).device
    dataset = build_eval_dataset(data, split, tokenizer) if isinstance(data, DataConfig) else data
    data_vocab = dataset_vocab(dataset)
    vocab = list(answer_vocab) if answer_vocab else data_vocab
    if method != "generate" and not vocab:
        raise ConfigError(f"VQA {method}: no answer vocabulary (pass answer_vocab / --answer-vocab)")
    if method == "classify" and model.heads["vqa"][-1].out_features != len(vocab):
        raise ConfigError(
            f"VQA classify: the vqa head has {model.heads['vqa'][-1].out_features} answers but the answer "
            f"vocabulary has {len(vocab)}; pass the fine-tuning vocabulary (--answer-vocab)"
        )
    if method != "classify":
        check_generative(model, style)
    max_len = data.max_text_len if isinstance(data, DataConfig) else model_data_config(model).max_text_len
    preds: list[str] = []
    metas: list[dict[str, Any]] = []
    was_training = model.training
    model.eval()
    try:
        skipped: list = []
        batches = iterate_batches(
            dataset, tokenizer, batch_size, max_len, len(data_vocab) or None, num_workers, skipped
        )
        for batch in batches:
            batch = batch.to(device)
            with torch.no_grad():
                if method == "classify":
                    preds.extend(vocab[i] for i in answer_logits(model, batch).argmax(1).tolist())
                elif method == "generate":
                    preds.extend(generate_answers(model, tokenizer, batch, style, options))
                else:
                    preds.extend(rank_answers(model, tokenizer, batch, style, vocab, max_len))
            metas.extend(batch.meta)
    finally:
        model.train(was_training)
    if not metas:
        raise ConfigError("VQA: the evaluation data yielded no questions")
    missing = [m.get("question_id") for m in metas if not m.get("answers")]
    if missing:
        raise ConfigError(f"VQA: {len(missing)} questions have no human answers (e.g. {missing[0]}); need annotations")
    answers = [list(m["answers"]) for m in metas]
    answer_types = [str(m.get("answer_type", "")) for m in metas]
    question_types = [str(m.get("question_type", "")) for m in metas]
    scored = vqa_score(preds, answers, question_types, answer_types)
    prior = vqa_score(answer_prior(answers, answer_types), answers, answer_types=answer_types)
    metrics: dict[str, Any] = {
        "overall": scored["overall"],
        "per_answer_type": scored["per_answer_type"],
        "per_question_type": scored["per_question_type"],
        "n_questions": len(metas),
        "n_skipped": len(skipped),  # unreadable samples the loader left out
        "method": method,
        "chance": {"overall": prior["overall"], "per_answer_type": prior["per_answer_type"]},
    }
    if keep_predictions:
        metrics["predictions"] = [{"question_id": m.get("question_id"), "answer": p} for m, p in zip(metas, preds)]
    return metrics


__all__ = ["evaluate"]
