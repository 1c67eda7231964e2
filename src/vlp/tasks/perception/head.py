"""Zero-shot perception beyond labels (MaskCLIP-style): a heat map, a mask and a box for a text query.

A patch-based dual encoder (CLIP ViT; also the dual side of ALBEF/BLIP) gives dense features
(:meth:`vlp.vision.patch.PatchEncoder.dense_features`: the last layer's value path, the final
norm), each projected by the image projection into the joint space. Their cosine similarity with
the query's text embedding is an ``(h, w)`` map over the patch grid, upsampled bilinearly to the
image. Thresholding it (Otsu's threshold by default, or ``mean + k * std``) gives a mask; the box is
the bounding box of the mask's largest 4-connected component.

Evaluation on COCO instances (ShapesWorld: ``options.format: instances``): every object whose
(colour, shape) pair is unique in its image is one query ("red circle", put into the prompt
templates and ensembled as in :mod:`vlp.tasks.zeroshot`); the box is scored by IoU with the
ground-truth box. Metrics (percent): ``accuracy`` (IoU >= 0.5), ``miou`` and ``pointing`` (the heat
map's peak lies inside the box). ``chance``: a box of the mean ground-truth size at the image
centre (accuracy, mIoU) and a uniformly random point (pointing: the mean box area fraction).
Predict: :func:`heatmap` ``(model, tok, image, text) -> (H, W)`` array, :func:`locate_text`,
:func:`save_overlay` (PNG of the image with the heat map and box drawn over it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlp.config import ConfigError
from vlp.metrics.masks import largest_component, mask_to_box


def check_dense(model: Any) -> None:
    """Dense features need a patch encoder with layers and a dual-encoder projection (not MoME)."""
    from vlp.tasks.common import has_dual

    if not has_dual(model):
        raise ConfigError("zero-shot perception needs a dual-encoder side (model.embed_dim > 0, e.g. CLIP)")
    if not hasattr(model.vision, "dense_features") or getattr(model.vision, "transformer", None) is None:
        raise ConfigError("zero-shot perception needs a patch (ViT) image encoder with transformer layers")
    if model.towers_in_fusion:
        raise ConfigError("zero-shot perception: MoME models (VLMo) embed images through the fusion experts")


def dense_similarity(model: Any, images: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every patch with a text: images ``(B, 3, H, W)``, text_embeds ``(B, E)``
    (one normalized query per image) -> ``(B, h, w)``."""
    check_dense(model)
    features, (h, w) = model.vision.dense_features(images)
    patches = F.normalize(model.image_proj(features), dim=-1)  # (B, h*w, E)
    sim = torch.einsum("bne,be->bn", patches, F.normalize(text_embeds.to(patches.dtype), dim=-1))
    return sim.view(-1, h, w)


def heat_to_image(heat: np.ndarray, width: int, height: int, eval_crop: str = "resize") -> np.ndarray:
    """Bilinear upsampling of an ``(h, w)`` map to the ``(height, width)`` original image.

    ``resize`` (the model saw the whole image squashed): the map covers the image. ``center``: it
    covers the centred square; outside it the map holds its minimum.
    """
    grid = torch.as_tensor(np.asarray(heat, dtype=np.float32))[None, None]
    if eval_crop != "center":
        return F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
    side = min(width, height)
    inner = F.interpolate(grid, size=(side, side), mode="bilinear", align_corners=False)[0, 0].numpy()
    out = np.full((height, width), inner.min(), dtype=np.float32)
    top, left = (height - side) // 2, (width - side) // 2
    out[top : top + side, left : left + side] = inner
    return out


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut of a ``bins``-bin histogram that maximizes between-class variance."""
    values = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1].astype(np.float64)  # pixels at or below each candidate cut
    w1 = values.size - w0
    sums = np.cumsum(counts * centres)[:-1]
    mu0 = sums / np.maximum(w0, 1)
    mu1 = (sums[-1] + counts[-1] * centres[-1] - sums) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[1:][:-1][int(np.argmax(between))])


def threshold_mask(heat: np.ndarray, method: str = "otsu", k: float = 1.0) -> np.ndarray:
    """Boolean mask of ``heat > t``: ``otsu``, or ``std`` with ``t = mean + k * std``."""
    if method == "otsu":
        t = otsu_threshold(heat)
    elif method == "std":
        t = float(heat.mean() + k * heat.std())
    else:
        raise ConfigError(f"threshold: {method!r} is not one of otsu, std")
    mask = heat > t
    if not mask.any():  # a flat map: keep its peak so there is always a box
        mask = heat >= heat.max()
    return mask


def heat_box(heat: np.ndarray, method: str = "otsu", k: float = 1.0) -> tuple[tuple[float, ...], np.ndarray]:
    """``(box, mask)``: the threshold mask's largest component and its bounding box."""
    mask = largest_component(threshold_mask(heat, method, k))
    return mask_to_box(mask), mask


# ----------------------------------------------------------------------------- predict


def heatmap(model: Any, tokenizer: Any, image: Any, text: str, templates: Any = None) -> np.ndarray:
    """The ``(H, W)`` patch-text cosine similarity map of ``text`` over ``image`` (PIL image or path),
    at the image's own size. With ``templates`` (see :func:`vlp.tasks.zeroshot.resolve_templates`)
    ``text`` is a class name and its template-ensembled embedding is the query."""
    from vlp.tasks.common import model_data_config, preprocess_images
    from vlp.tasks.refexp_predict import load_upright
    from vlp.tasks.zeroshot import class_embeddings, encode_texts

    if not isinstance(text, str):
        raise TypeError(f"text: expected a string, got {type(text).__name__}")
    check_dense(model)
    config = model_data_config(model)
    upright = load_upright([image], config.max_image_pixels)[0]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if templates is None:
                query = encode_texts(model, tokenizer, [text], config.max_text_len)
            else:
                query = class_embeddings(model, tokenizer, [text], templates, config.max_text_len)
            sim = dense_similarity(model, preprocess_images([upright], config).to(device), query)[0]
    finally:
        model.train(was_training)
    return heat_to_image(sim.float().cpu().numpy(), *upright.size, config.transform.eval_crop)


def locate_text(
    model: Any, tokenizer: Any, image: Any, text: str, threshold: str = "otsu", k: float = 1.0, templates: Any = None
) -> tuple[tuple[float, float, float, float], np.ndarray, np.ndarray]:
    """``(box (x1, y1, x2, y2) pixels, mask (H, W) bool, heat (H, W))`` of ``text`` in ``image``."""
    heat = heatmap(model, tokenizer, image, text, templates)
    box, mask = heat_box(heat, threshold, k)
    return box, mask, heat


def colorize(heat: np.ndarray) -> np.ndarray:
    """``(H, W)`` values -> ``(H, W, 3)`` uint8 on a dark-blue -> red -> yellow ramp (min-max scaled)."""
    span = float(heat.max() - heat.min())
    t = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    anchors = np.array([[0, 0, 80], [40, 40, 220], [220, 40, 40], [255, 220, 40]], dtype=np.float64)
    pos = t * (len(anchors) - 1)
    low = np.clip(np.floor(pos).astype(int), 0, len(anchors) - 2)
    frac = (pos - low)[..., None]
    return (anchors[low] * (1 - frac) + anchors[low + 1] * frac).round().astype(np.uint8)


def save_overlay(image: Any, heat: np.ndarray, path: str | Path, box: Any = None, alpha: float = 0.5) -> Path:
    """Write a PNG of ``image`` blended with the colorized ``heat`` (same size) and ``box`` outlined."""
    from PIL import Image, ImageDraw

    from vlp.tasks.refexp_predict import load_upright

    base = load_upright([image])[0]
    if heat.shape != (base.size[1], base.size[0]):
        raise ValueError(f"heat map {heat.shape} does not match the image {base.size[1]}x{base.size[0]} (H x W)")
    overlay = Image.blend(base, Image.fromarray(colorize(heat)), alpha)
    if box is not None:
        x1, y1, x2, y2 = box
        ImageDraw.Draw(overlay).rectangle([x1, y1, x2 - 1, y2 - 1], outline=(255, 255, 255), width=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay.save(path)
    return path


# ----------------------------------------------------------------------------- evaluate


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


def _score(sim: np.ndarray, record: dict[str, Any], target: list[float], crop: str, method: str,
           k: float) -> dict[str, Any]:  # fmt: skip
    """One query: the box of its heat map at image size, and whether the map's peak hits the target."""
    heat = heat_to_image(sim, record["width"], record["height"], crop)
    box, _ = heat_box(heat, method, k)
    peak_y, peak_x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    hit = target[0] <= peak_x + 0.5 <= target[2] and target[1] <= peak_y + 0.5 <= target[3]
    return {"box": list(box), "target": target, "hit": hit, "size": (record["width"], record["height"])}


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
    from torch.utils.data import Subset

    from vlp.data.config import DataConfig
    from vlp.metrics import elementwise_box_iou
    from vlp.tasks.common import build_eval_dataset, iterate_batches, model_data_config
    from vlp.tasks.refexp import centre_box_chance
    from vlp.tasks.zeroshot import class_embeddings

    check_dense(model)
    config = data if isinstance(data, DataConfig) else model_data_config(model)
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
                        row = _score(sim, record, target, config.transform.eval_crop, threshold, k)
                        rows.append({"image_id": record.get("image_id"), "query": name, **row})
    finally:
        model.train(was_training)
    pred = torch.tensor([r["box"] for r in rows], dtype=torch.float64)
    target = torch.tensor([r["target"] for r in rows], dtype=torch.float64)
    iou = elementwise_box_iou(pred, target)
    scale = torch.tensor([[w, h, w, h] for w, h in (r["size"] for r in rows)], dtype=torch.float64)
    normalized = target / scale
    area = ((normalized[:, 2] - normalized[:, 0]) * (normalized[:, 3] - normalized[:, 1])).mean().item()
    metrics: dict[str, Any] = {
        "accuracy": 100 * (iou >= 0.5).double().mean().item(),
        "miou": 100 * iou.mean().item(),
        "pointing": 100 * sum(r["hit"] for r in rows) / len(rows),
        "n_queries": len(rows),
        "chance": {**centre_box_chance(normalized), "pointing": 100 * area},
    }
    if keep_predictions:
        metrics["predictions"] = [{"image_id": r["image_id"], "query": r["query"], "box": r["box"],
                                   "target": r["target"], "iou": v} for r, v in zip(rows, iou.tolist())]  # fmt: skip
    return metrics


# ----------------------------------------------------------------------------- vlp eval perception


__all__ = [
    "check_dense",
    "dense_similarity",
    "evaluate",
    "heat_box",
    "heat_to_image",
    "heatmap",
    "locate_text",
    "otsu_threshold",
    "save_overlay",
    "threshold_mask",
    "unique_queries",
]
