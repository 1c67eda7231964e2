"""Visual question answering: answer classification (ViLT/UNITER/ALBEF-style head) and generative
VQA (BLIP style, :mod:`vlp.tasks.vqa_gen`), both scored with the official VQA accuracy.

Classification: the ``vqa`` head maps the fused pooled output (the fused [CLS]) to one logit per
answer of a vocabulary of the most frequent training answers (the data loader builds it:
``data.options.top_k``, 3129 for VQAv2). Targets are VQAv2's soft scores (the expected official
accuracy of each answer: 0, 0.3, 0.6, 0.9, 1 for 0..>=4 matching annotators). The loss is
binary cross-entropy with logits, averaged over batch *and* answers and then multiplied by the
number of answers, exactly as ViLT and UNITER do: that is BCE summed over answers and averaged
over questions, which keeps the gradient of each answer logit independent of the vocabulary
size. The fine-tuning builder adds (or resizes) the ``vqa`` head to the vocabulary and records
the vocabulary in the run's ``task.answer_vocab``, so ``vlp eval vqa --model RUN`` maps logits
back to answers.

Evaluation: predictions are normalized like the official script does and scored with
:func:`vlp.metrics.vqa_score`, overall and per answer type (and per question type in
``results.json``). ``chance`` is a question-blind prior: always answering the most frequent
human answer of each answer type in the evaluated split.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError, from_dict
from vlp.data.batch import Batch
from vlp.objectives.base import logs_to_floats


@dataclass
class VQATask:
    """The ``task:`` section of a VQA recipe."""

    type: str = "vqa"
    mode: Literal["classify", "generate"] = "classify"
    style: Literal["prefix", "blip"] = "prefix"  # generate: how the decoder sees the question (vqa_gen)
    label_smoothing: float = 0.0  # generate: LM label smoothing
    hidden: int = 0  # classify: hidden width of a new vqa head (0 = 2 x pooled width)
    # written by build_finetuning: the answer vocabulary the vqa head's outputs stand for
    answer_vocab: list[str] = field(default_factory=list)


def answer_logits(model: Any, batch: Batch) -> torch.Tensor:
    """``(B, A)`` answer logits: fuse question and image, the ``vqa`` head on the pooled output."""
    ids, mask, types = model.text_inputs(batch)
    fused = model.fuse(model.text_tokens(ids, mask, types), mask, model.image_tokens(batch))
    return model.heads["vqa"](fused.pooled)


class VQAClassifier(nn.Module):
    """Fine-tuning module: ``forward(batch) -> (loss, logs)`` with the soft-target BCE above.

    Logs ``vqa_score``: the mean soft score of the arg-max answer (the training VQA score ViLT logs).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if "vqa" not in model.heads:
            raise ConfigError("VQA classification needs a vqa head (model.heads.vqa: {num_answers: N})")
        self.model = model

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        targets = batch.answer_targets
        if targets is None:
            raise ConfigError("VQA fine-tuning: the batch has no answer_targets (data must be VQA with annotations)")
        logits = answer_logits(self.model, batch).float()
        if logits.shape != targets.shape:
            raise ConfigError(f"vqa head gives {logits.shape[1]} answers but the data has {targets.shape[1]}")
        loss = F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]
        with torch.no_grad():
            score = targets.gather(1, logits.argmax(1, keepdim=True)).mean()
        return loss, logs_to_floats({"vqa_score": score})


def ensure_vqa_head(model: Any, num_answers: int, hidden: int = 0) -> None:
    """Give ``model`` a ``vqa`` head of ``num_answers`` outputs (a fresh one unless it already fits);
    the model config is updated too, so the saved recipe rebuilds the same head."""
    from vlp.models.heads import HeadContext, build_heads
    from vlp.tasks.common import has_fusion

    if not has_fusion(model):
        raise ConfigError("VQA classification needs a fusion module (the vqa head reads the fused [CLS])")
    current = model.heads["vqa"] if "vqa" in model.heads else None
    if current is not None and current[-1].out_features == num_answers:
        return
    options = {"num_answers": num_answers, **({"hidden": hidden} if hidden else {})}
    ctx = HeadContext(pooled_dim=model.fusion.pooled_dim)
    device = next(model.parameters()).device
    model.heads["vqa"] = build_heads({"vqa": options}, ctx)["vqa"].to(device)
    model.cfg.heads["vqa"] = options


def dataset_vocab(dataset: Any) -> list[str]:
    """The answer vocabulary a VQA dataset's targets index (empty when it has none)."""
    config = getattr(getattr(dataset, "processor", None), "config", None)
    return list(getattr(config, "answer_vocab", None) or [])


def build_finetuning(
    task: dict[str, Any], recipe: Any, model: Any, tokenizer: Any, *, rank: int = 0, world_size: int = 1
) -> tuple[Any, Any]:
    """``(VQAClassifier | VQAGenerator, VQA train loader)`` for ``vlp finetune``.

    Writes the training answer vocabulary into ``task["answer_vocab"]`` (saved with the run).
    """
    from vlp.data import build_loader

    opts = from_dict(VQATask, task, "task")
    loader = build_loader(
        recipe.data, "train", tokenizer, recipe.train.batch_size, num_workers=recipe.train.num_workers,
        rank=rank, world_size=world_size, pin_memory=torch.cuda.is_available(),
    )  # fmt: skip
    vocab = dataset_vocab(loader.dataset)
    if opts.mode == "classify":
        if not vocab:
            raise ConfigError("data: VQA classification needs VQA data with answers (e.g. shapesworld format: vqa)")
        if opts.answer_vocab and opts.answer_vocab != vocab:
            raise ConfigError("task.answer_vocab: differs from the vocabulary the data loader built; remove it")
        ensure_vqa_head(model, len(vocab), opts.hidden)
        recipe.model.heads["vqa"] = dict(model.cfg.heads["vqa"])  # the run's saved recipe rebuilds the head
        module: nn.Module = VQAClassifier(model)
    else:
        from vlp.tasks.vqa_gen import VQAGenerator

        module = VQAGenerator(model, tokenizer, opts.style, opts.label_smoothing, recipe.data.max_text_len)
    task["answer_vocab"] = vocab  # generative: the candidates of rank-mode evaluation
    return module, loader


# ----------------------------------------------------------------------------- evaluate


def answer_prior(answers: list[list[str]], answer_types: list[str]) -> list[str]:
    """Question-blind predictions: the most frequent human answer of each answer type
    (ties broken alphabetically)."""
    counts: dict[str, Counter] = {}
    for given, kind in zip(answers, answer_types):
        counts.setdefault(kind, Counter()).update(given)
    best = {kind: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for kind, c in counts.items()}
    return [best[kind] for kind in answer_types]


def default_decode_options() -> Any:
    """Greedy decoding of at most 10 tokens: answers are a few words."""
    from vlp.tasks.captioning import DecodeOptions

    return DecodeOptions(strategy="greedy", max_new_tokens=10)


def _resolve_method(model: Any, method: str) -> str:
    if method == "auto":
        return "classify" if "vqa" in model.heads else "generate"
    if method not in ("classify", "generate", "rank"):
        raise ConfigError(f"VQA method: {method!r} is not one of auto, classify, generate, rank")
    if method == "classify" and "vqa" not in model.heads:
        raise ConfigError("VQA classify: the model has no vqa head (fine-tune it with a task recipe of mode classify)")
    return method


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
    with ``options``, a :class:`~vlp.tasks.captioning.DecodeOptions`), ``rank`` (the decoder's
    most likely answer of ``answer_vocab``) or ``auto`` (classify when the model has a vqa head).
    ``answer_vocab`` defaults to the dataset's. ``data``: a DataConfig or a dataset of VQA samples
    whose meta holds ``answers`` (and ``answer_type``, ``question_type``, ``question_id``).

    Returns ``overall``, ``per_answer_type``, ``per_question_type``, ``n_questions``, ``n_skipped``, ``method``,
    ``chance`` (``overall`` and ``per_answer_type`` of the prior) and, with ``keep_predictions``,
    ``predictions``: ``[{"question_id", "answer"}]`` (VQA's results format).
    """
    from vlp.data.config import DataConfig
    from vlp.metrics import vqa_score
    from vlp.tasks.common import build_eval_dataset, iterate_batches, model_data_config

    method = _resolve_method(model, method)
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
        from vlp.tasks.vqa_gen import check_generative

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
                    from vlp.tasks.vqa_gen import generate_answers

                    preds.extend(generate_answers(model, tokenizer, batch, style, options))
                else:
                    from vlp.tasks.vqa_gen import rank_answers

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


# ----------------------------------------------------------------------------- predict


def predict(
    model: Any,
    tokenizer: Any,
    images: list[Any],
    texts: list[str],
    *,
    answer_vocab: list[str] | None = None,
    method: str = "auto",
    style: str = "prefix",
    options: Any = None,
    device: Any = None,
) -> list[str]:
    """One answer per (image, question) pair; images are PIL images or paths.

    ``classify`` needs ``answer_vocab`` (the fine-tuning vocabulary: ``task.answer_vocab`` of the run).
    """
    from vlp.tasks.common import check_texts, image_batch, model_data_config

    texts = check_texts(texts, "texts")
    if len(images) != len(texts):
        raise ValueError(f"got {len(images)} images but {len(texts)} questions; pass one question per image")
    method = _resolve_method(model, method)
    options = options or default_decode_options()
    device = device if device is not None else next(model.parameters()).device
    tok = tokenizer(texts, max_length=model_data_config(model).max_text_len)
    batch = image_batch(model, images).replace(
        input_ids=tok.input_ids, attention_mask=tok.attention_mask.bool(), token_type_ids=tok.token_type_ids,
        meta=[{"text": t} for t in texts],
    ).to(device)  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if method == "classify":
                if not answer_vocab or len(answer_vocab) != model.heads["vqa"][-1].out_features:
                    raise ValueError("predict (classify): pass answer_vocab, the vocabulary of the vqa head")
                return [answer_vocab[i] for i in answer_logits(model, batch).argmax(1).tolist()]
            from vlp.tasks.vqa_gen import check_generative, generate_answers, rank_answers

            check_generative(model, style)
            if method == "rank":
                return rank_answers(model, tokenizer, batch, style, list(answer_vocab or []))
            return generate_answers(model, tokenizer, batch, style, options)
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- vlp eval vqa


__all__ = [
    "VQAClassifier",
    "VQATask",
    "answer_logits",
    "answer_prior",
    "build_finetuning",
    "dataset_vocab",
    "ensure_vqa_head",
    "evaluate",
    "predict",
]
