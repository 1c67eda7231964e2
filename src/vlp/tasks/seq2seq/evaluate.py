"""Evaluation of the OFA-style encoder-decoder on its three tasks, each the field's way: captions by
COCO caption metrics (CIDEr), answers by official VQA accuracy, boxes by accuracy at IoU >= 0.5 (RefCOCO)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from vlp.config import ConfigError
from vlp.data.batch import Batch
from vlp.data.config import DataConfig
from vlp.data.skipping import Skipped
from vlp.data.transforms import eval_geometry
from vlp.metrics import caption_metrics, resolve_backend
from vlp.metrics.refexp import centre_box_chance, pixel_ious
from vlp.metrics.vqa import answer_prior, vqa_score
from vlp.tasks.common import build_eval_dataset
from vlp.tasks.decoding import DecodeOptions
from vlp.tasks.seq2seq.data import SHAPES_FORMATS, TASK_NAMES, instruction, instruction_length
from vlp.tasks.seq2seq.decode import generate_boxes, generate_text
from vlp.tasks.vqa.head import dataset_vocab


def instruction_batches(dataset: Any, task: str, tokenizer: Any, batch_size: int, max_len: int,
                        skipped: list) -> Iterator[Batch]:  # fmt: skip
    """The dataset's samples in order as Batches of images + the task's instruction; bad samples go to ``skipped``.

    ``max_len``: the data's ``max_text_len``, for the question or expression; the template comes on top of it."""
    limit = instruction_length(tokenizer, max_len)

    def collate(samples: list[Any]) -> Batch | None:
        skipped.extend(s for s in samples if isinstance(s, Skipped))
        kept = [s for s in samples if not isinstance(s, Skipped)]
        if not kept:
            return None
        enc = tokenizer([instruction(task, s) for s in kept], max_length=limit)
        return Batch(input_ids=enc.input_ids, attention_mask=enc.attention_mask.bool(),
                     images=torch.stack([s["image"] for s in kept]),
                     target_boxes=torch.stack([s["target_box"] for s in kept]) if task == "refexp" else None,
                     meta=[{**s["meta"], "text": s.get("text")} for s in kept])  # fmt: skip

    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        if batch is not None:
            yield batch


def _data_for(data: DataConfig, task: str) -> DataConfig:
    if data.type != "shapesworld":
        return data
    return dataclasses.replace(data, options={**dict(data.options), "format": SHAPES_FORMATS[task]})


def evaluate(
    model: Any,
    tokenizer: Any,
    data: DataConfig,
    *,
    split: str = "test",
    tasks: tuple[str, ...] = TASK_NAMES,
    options: DecodeOptions | None = None,
    answers: list[str] | None = None,
    backend: str = "auto",
    batch_size: int = 64,
    device: Any = None,
) -> dict[str, Any]:
    """Scores of ``model`` on each of ``tasks`` (``caption``, ``vqa``, ``refexp``) of ``split``.

    ``data``: a ShapesWorld data section (each task reads its format) or, for a single task, a data section of
    that task's format. ``answers``: the VQA answer list decoding is restricted to (a trie); None = the answers
    of the ``train`` split; ``[]`` = free generation. Returns ``{"caption": {CIDEr, Bleu_4, ...}, "vqa":
    {overall, per_answer_type, chance}, "refexp": {accuracy, miou, chance}}`` for the tasks asked.
    """
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown:
        raise ConfigError(f"seq2seq tasks {unknown}: choose from {', '.join(TASK_NAMES)}")
    options = options or DecodeOptions(strategy="greedy")
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict[str, Any] = {}
    try:
        for task in tasks:
            config = _data_for(data, task)
            dataset = build_eval_dataset(config, split, tokenizer)
            run = {"caption": _captions, "vqa": _answers, "refexp": _boxes}[task]
            out[task] = run(model, tokenizer, config, dataset, options, batch_size, device, answers, backend)
    finally:
        model.train(was_training)
    return out


def _captions(model, tokenizer, config, dataset, options, batch_size, device, answers, backend) -> dict[str, Any]:
    chosen = resolve_backend(backend)
    predictions, references, skipped = {}, {}, []
    for batch in instruction_batches(dataset, "caption", tokenizer, batch_size, config.max_text_len, skipped):
        for meta, text in zip(batch.meta, generate_text(model, tokenizer, batch.to(device), options)):
            if not meta.get("captions"):
                raise ConfigError(f"seq2seq captions: image {meta.get('image', '?')} has no reference captions")
            key = meta.get("index", len(predictions))
            predictions[key], references[key] = text, list(meta["captions"])
    if not predictions:
        raise ConfigError("seq2seq captions: the evaluation data yielded no images")
    metrics = caption_metrics(predictions, references, backend=chosen, meteor=False)
    metrics.update(n_images=len(predictions), n_skipped=len(skipped), backend=chosen)
    return metrics


def _answers(model, tokenizer, config, dataset, options, batch_size, device, answers, backend) -> dict[str, Any]:
    if answers is None:  # the training answers, as a classifier's answer vocabulary would be
        answers = dataset_vocab(build_eval_dataset(config, "train", tokenizer))
    preds, metas, skipped = [], [], []
    for batch in instruction_batches(dataset, "vqa", tokenizer, batch_size, config.max_text_len, skipped):
        preds.extend(generate_text(model, tokenizer, batch.to(device), options, answers or None))
        metas.extend(batch.meta)
    if not metas:
        raise ConfigError("seq2seq VQA: the evaluation data yielded no questions")
    human = [list(m.get("answers") or []) for m in metas]
    if not all(human):
        raise ConfigError("seq2seq VQA: some questions have no human answers; need annotations")
    kinds = [str(m.get("answer_type", "")) for m in metas]
    scored = vqa_score(preds, human, answer_types=kinds)
    prior = vqa_score(answer_prior(human, kinds), human, answer_types=kinds)
    return {"overall": scored["overall"], "per_answer_type": scored["per_answer_type"], "n_questions": len(metas),
            "n_skipped": len(skipped), "constrained": bool(answers),
            "chance": {"overall": prior["overall"], "per_answer_type": prior["per_answer_type"]}}  # fmt: skip


def _boxes(model, tokenizer, config, dataset, options, batch_size, device, answers, backend) -> dict[str, Any]:
    boxes, targets, metas, skipped = [], [], [], []
    for batch in instruction_batches(dataset, "refexp", tokenizer, batch_size, config.max_text_len, skipped):
        boxes.append(generate_boxes(model, tokenizer, batch.to(device), options))
        targets.append(batch.target_boxes.float())
        metas.extend(batch.meta)
    if not metas:
        raise ConfigError("seq2seq referring expressions: the evaluation data yielded no expressions")
    records = getattr(getattr(dataset, "index", None), "records", None)
    view_of = eval_geometry(config.image_size, config.transform).view
    iou = pixel_ious(torch.cat(boxes), torch.cat(targets), metas, records, view_of)
    return {"accuracy": 100 * (iou >= 0.5).double().mean().item(), "miou": 100 * iou.double().mean().item(),
            "n_expressions": len(metas), "n_skipped": len(skipped),
            "chance": centre_box_chance(torch.cat(targets))}  # fmt: skip


__all__ = ["evaluate", "instruction_batches"]
