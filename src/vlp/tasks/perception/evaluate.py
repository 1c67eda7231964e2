"""Perception evaluation: the box of each unique colour-shape query's heat map against the ground truth
(accuracy at IoU 0.5, mean IoU, pointing game), with chance levels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from vlp.config import ConfigError
from vlp.data.config import DataConfig
from vlp.data.transforms import eval_geometry
from vlp.metrics.boxes import elementwise_box_iou
from vlp.metrics.refexp import centre_box_chance
from vlp.tasks.common import build_eval_dataset, iterate_batches, model_data_config
from vlp.tasks.perception.head import check_dense, heat_box, heat_to_image
from vlp.tasks.zeroshot.head import class_embeddings


def unique_queries(record: dict[str, Any], categories: list[str]) -> list[tuple[str, list[float]]]:
    """``[(query "colour shape", target box xyxy pixels)]`` for the objects of one COCO-instances
    record whose colour-shape pair occurs once in the image (so the query names one object)."""
    pairs = []
    for box, label, attrs in zip(record.get("boxes") or [], record.get("labels") or [], record.get("attributes") or []):
        color = (attrs or {}).get("color")
        if isinstance(color, str):
            pairs.append((f"{color} {categories[label]}", list(box)))
    counts: dict[str, int] = {}
    for name, _ in pairs:
        counts[name] = counts.get(name, 0) + 1
    return [(name, box) for name, box in pairs if counts[name] == 1]


def _score(sim: np.ndarray, record: dict[str, Any], target: list[float], geometry: Any, method: str,
           ks: Sequence[float]) -> dict[str, Any]:  # fmt: skip
    """One query: the box of its heat map at image size for every ``k`` of ``ks`` (the map upsampled once),
    and whether the map's peak hits the target."""
    heat = heat_to_image(sim, record["width"], record["height"], geometry.view(record["width"], record["height"]))
    boxes = [list(heat_box(heat, method, k)[0]) for k in ks]
    peak_y, peak_x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    hit = target[0] <= peak_x + 0.5 <= target[2] and target[1] <= peak_y + 0.5 <= target[3]
    return {"boxes": boxes, "target": target, "hit": hit, "size": (record["width"], record["height"])}


def evaluate(
    model: Any,
    tokenizer: Any,
    data: Any,
    *,
    split: str = "test",
    templates: Any = "photo",
    threshold: str = "otsu",
    k: float = 1.0,
    batch_size: int = 64,
    num_workers: int = 0,
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Box IoU of text-query heat maps against ground truth (see the module docstring).

    ``data``: a DataConfig of COCO instances with colour attributes (ShapesWorld) or such a dataset.
    Returns ``accuracy``, ``miou``, ``pointing``, ``n_queries``, ``chance`` and, with
    ``keep_predictions``, ``predictions`` ``[{"image_id", "query", "box", "target", "iou"}]``.
    """
    return evaluate_thresholds(model, tokenizer, data, split=split, templates=templates, threshold=threshold,
                               ks=(k,), batch_size=batch_size, num_workers=num_workers,
                               keep_predictions=keep_predictions)[0]  # fmt: skip


def evaluate_thresholds(
    model: Any,
    tokenizer: Any,
    data: Any,
    *,
    split: str = "test",
    templates: Any = "photo",
    threshold: str = "std",
    ks: Sequence[float] = (1.0,),
    batch_size: int = 64,
    num_workers: int = 0,
    keep_predictions: bool = False,
) -> list[dict[str, Any]]:
    """:func:`evaluate` at every ``k`` of ``ks`` (``threshold: std``, mean + k * std), in that order, from one
    pass of the model: the heat maps do not depend on the threshold, so they are computed (and upsampled) once.
    """
    if not ks:
        raise ConfigError("perception: ks is empty; give at least one threshold k")
    check_dense(model)
    config = data if isinstance(data, DataConfig) else model_data_config(model)
    geometry = eval_geometry(config.image_size, config.transform)
    dataset = build_eval_dataset(data, split, tokenizer) if isinstance(data, DataConfig) else data
    index = getattr(dataset, "index", None)
    if index is None or "categories" not in index.extras:
        raise ConfigError("perception data must be COCO instances (ShapesWorld: --format shapesworld reads them)")
    queries = {i: unique_queries(r, index.extras["categories"]) for i, r in enumerate(index.records)}
    sizeless = [
        r.get("image") for i, r in enumerate(index.records) if queries[i] and not (r.get("width") and r.get("height"))
    ]
    if sizeless:
        raise ConfigError(
            f"perception: {sizeless[0]} has no width/height in the instances file (COCO images need them)"
        )
    chosen = [i for i, q in queries.items() if q]
    if not chosen:
        raise ConfigError("perception: no object has a colour attribute unique in its image (ShapesWorld data has)")
    names = sorted({name for i in chosen for name, _ in queries[i]})
    device = next(model.parameters()).device
    rows: list[dict[str, Any]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            text = class_embeddings(model, tokenizer, names, templates, config.max_text_len)
            position = {n: j for j, n in enumerate(names)}
            for batch in iterate_batches(Subset(dataset, chosen), None, batch_size, num_workers=num_workers):
                images = batch.images.to(device)
                features, (h, w) = model.vision.dense_features(images)
                patches = F.normalize(model.image_proj(features), dim=-1).float().cpu()
                for b, meta in enumerate(batch.meta):
                    record = index.records[meta["index"]]
                    for name, target in queries[meta["index"]]:
                        sim = (patches[b] @ text[position[name]].float().cpu()).view(h, w).numpy()
                        row = _score(sim, record, target, geometry, threshold, ks)
                        rows.append({"image_id": record.get("image_id"), "query": name, **row})
    finally:
        model.train(was_training)
    target = torch.tensor([r["target"] for r in rows], dtype=torch.float64)
    scale = torch.tensor([[w, h, w, h] for w, h in (r["size"] for r in rows)], dtype=torch.float64)
    normalized = target / scale
    area = ((normalized[:, 2] - normalized[:, 0]) * (normalized[:, 3] - normalized[:, 1])).mean().item()
    pointing = 100 * sum(r["hit"] for r in rows) / len(rows)
    chance = {**centre_box_chance(normalized), "pointing": 100 * area}
    out = []
    for j in range(len(ks)):
        pred = torch.tensor([r["boxes"][j] for r in rows], dtype=torch.float64)
        iou = elementwise_box_iou(pred, target)
        metrics: dict[str, Any] = {
            "accuracy": 100 * (iou >= 0.5).double().mean().item(),
            "miou": 100 * iou.mean().item(),
            "pointing": pointing,
            "n_queries": len(rows),
            "chance": dict(chance),
        }
        if keep_predictions:
            metrics["predictions"] = [
                {"image_id": r["image_id"], "query": r["query"], "box": r["boxes"][j], "target": r["target"], "iou": v}
                for r, v in zip(rows, iou.tolist())
            ]
        out.append(metrics)
    return out
