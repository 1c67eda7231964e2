"""Captioning evaluation: caption every image and score against its references (COCO caption metrics)."""

from __future__ import annotations

from typing import Any

from vlp.config import ConfigError
from vlp.data.config import DataConfig
from vlp.metrics import caption_metrics, resolve_backend
from vlp.tasks.captioning.decode import captions_of
from vlp.tasks.common import build_eval_dataset, iterate_batches
from vlp.tasks.decoding import DecodeOptions


def evaluate(
    model: Any,
    tokenizer: Any,
    data: Any,
    *,
    split: str = "test",
    prompt: str = "a picture of ",
    options: DecodeOptions | None = None,
    backend: str = "auto",
    meteor: bool = True,
    batch_size: int = 32,
    device: Any = None,
    num_workers: int = 0,
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Caption every image of ``data`` and score against its reference captions.

    ``data``: a :class:`~vlp.data.config.DataConfig` (``split`` read one record per image) or a
    dataset whose samples carry ``meta["captions"]``. Returns ``Bleu_1..4``, ``ROUGE_L``, ``CIDEr``
    (+ ``METEOR`` with pycocoevalcap), ``backend``, ``n_images``, ``n_skipped`` (unreadable images
    left out) and, with ``keep_predictions``,
    ``predictions``: ``[{"image_id", "caption"}]`` (COCO's results format).
    """
    options = options or DecodeOptions()
    chosen = resolve_backend(backend)  # fail before decoding when the asked backend is missing
    device = device if device is not None else next(model.parameters()).device
    dataset = build_eval_dataset(data, split, tokenizer) if isinstance(data, DataConfig) else data
    predictions: dict[Any, str] = {}
    references: dict[Any, list[str]] = {}
    records, skipped = [], []
    was_training = model.training
    model.eval()
    try:
        for batch in iterate_batches(dataset, None, batch_size, num_workers=num_workers, skipped=skipped):
            texts = captions_of(model, tokenizer, batch.to(device), prompt, options)
            for meta, text in zip(batch.meta, texts):
                refs = meta.get("captions")
                if not refs:
                    raise ConfigError(f"captioning: image {meta.get('image', '?')} has no reference captions")
                key = meta.get("index", len(records))
                predictions[key], references[key] = text, list(refs)
                records.append({"image_id": meta.get("image_id", key), "caption": text})
    finally:
        model.train(was_training)
    if not predictions:
        raise ConfigError("captioning: the evaluation data yielded no images")
    metrics: dict[str, Any] = caption_metrics(predictions, references, backend=chosen, meteor=meteor)
    metrics.update(backend=chosen, n_images=len(predictions), n_skipped=len(skipped))
    if keep_predictions:
        metrics["predictions"] = records
    return metrics


__all__ = ["evaluate"]
