"""Referring-expression evaluation (the RefCOCO protocol): accuracy at IoU >= 0.5 and mean IoU,
in pixels of the original image, with the chance level of the mode."""

from __future__ import annotations

from typing import Any

import torch

from vlp.config import ConfigError
from vlp.data.config import DataConfig
from vlp.data.transforms import eval_geometry
from vlp.metrics.refexp import centre_box_chance, pixel_ious, random_candidate_chance, view_box_to_pixels
from vlp.tasks.common import build_eval_dataset, iterate_batches, model_data_config
from vlp.tasks.refexp.head import is_region_model, predict_normalized, trained_mode


def evaluate(
    model: Any,
    tokenizer: Any,
    data: Any,
    *,
    split: str = "test",
    mode: str = "auto",
    batch_size: int = 64,
    device: Any = None,
    num_workers: int = 0,
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Accuracy at IoU >= 0.5 and mean IoU (percent) of ``model`` on referring expressions.

    ``data``: a DataConfig (refcoco format) or a dataset of samples with ``target_box`` (and regions
    for region models). Returns ``accuracy``, ``miou``, ``n_expressions``, ``n_skipped``, ``mode``, ``chance``
    (``accuracy``, ``miou``) and, with ``keep_predictions``, ``predictions``:
    ``[{"ref_id", "sent_id", "image_id", "box" (pixels when the image size is known), "iou"}]``.
    """
    mode = trained_mode(model, mode)
    device = device if device is not None else next(model.parameters()).device
    dataset = build_eval_dataset(data, split, tokenizer) if isinstance(data, DataConfig) else data
    config = data if isinstance(data, DataConfig) else model_data_config(model)
    records = getattr(getattr(dataset, "index", None), "records", None)
    chance_acc, chance_iou, targets, metas, boxes, skipped = [], [], [], [], [], []
    was_training = model.training
    model.eval()
    try:
        for batch in iterate_batches(dataset, tokenizer, batch_size, config.max_text_len, None, num_workers, skipped):
            if batch.target_boxes is None:
                raise ConfigError("refexp: the evaluation samples have no target box (data must be refcoco format)")
            batch = batch.to(device)
            with torch.no_grad():
                pred = predict_normalized(model, batch, mode)
            target = batch.target_boxes.float()
            if mode in ("regions", "proposals"):  # a uniformly random candidate: expected hit rate and IoU
                hit, overlap = random_candidate_chance(batch.region_boxes, batch.region_mask, target)
                chance_acc.append(hit.cpu())
                chance_iou.append(overlap.cpu())
            targets.append(target.cpu())
            boxes.append(pred.cpu())
            metas.extend(batch.meta)
    finally:
        model.train(was_training)
    if not metas:
        raise ConfigError("refexp: the evaluation data yielded no expressions")
    view_of = eval_geometry(config.image_size, config.transform).view
    iou = pixel_ious(torch.cat(boxes), torch.cat(targets), metas, records, view_of)
    if mode in ("regions", "proposals"):
        chance = {
            "accuracy": 100 * torch.cat(chance_acc).double().mean().item(),
            "miou": 100 * torch.cat(chance_iou).double().mean().item(),
        }
    else:
        chance = centre_box_chance(torch.cat(targets))
    metrics: dict[str, Any] = {
        "accuracy": 100 * (iou >= 0.5).double().mean().item(),
        "miou": 100 * iou.double().mean().item(),
        "n_expressions": len(metas),
        "n_skipped": len(skipped),  # unreadable samples (bad image or region file), left out
        "mode": mode,
        "chance": chance,
    }
    if keep_predictions:
        metrics["predictions"] = _predictions(torch.cat(boxes), iou, metas, records, view_of)
    return metrics


def _predictions(boxes: torch.Tensor, iou: torch.Tensor, metas: list[dict[str, Any]], records: Any,
                 view_of: Any) -> list[dict[str, Any]]:  # fmt: skip
    out = []
    for box, value, meta in zip(boxes.tolist(), iou.tolist(), metas):
        record = records[meta["index"]] if records is not None and "index" in meta else {}
        width, height = record.get("width"), record.get("height")
        if width and height:
            box = view_box_to_pixels(box, view_of(width, height))
        out.append({"ref_id": meta.get("ref_id"), "sent_id": meta.get("sent_id"), "image_id": meta.get("image_id"),
                    "expression": meta.get("text"), "box": [round(v, 2) for v in box], "iou": value})  # fmt: skip
    return out


def eval_data_for(model: Any, data: Any) -> Any:
    """Region models read ShapesWorld's region files (and no pixels) unless the data says otherwise."""
    if is_region_model(model) and data.type == "shapesworld":
        data.options.setdefault("regions", True)
        data.options.setdefault("load_images", False)
    return data


__all__ = ["eval_data_for", "evaluate"]
