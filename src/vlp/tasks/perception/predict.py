"""Perception on a user's own images: the heat map of a text query, its mask and box, and a PNG overlay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from vlp.data.transforms import eval_geometry
from vlp.tasks.common import load_upright, model_data_config, preprocess_images
from vlp.tasks.perception.head import check_dense, dense_similarity, heat_box, heat_to_image
from vlp.tasks.zeroshot.head import class_embeddings, encode_texts


def heatmap(model: Any, tokenizer: Any, image: Any, text: str, templates: Any = None) -> np.ndarray:
    """The ``(H, W)`` patch-text cosine similarity map of ``text`` over ``image`` (PIL image or path),
    at the image's own size. With ``templates`` (see :func:`vlp.tasks.zeroshot.resolve_templates`)
    ``text`` is a class name and its template-ensembled embedding is the query."""
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
    view = eval_geometry(config.image_size, config.transform).view(*upright.size)
    return heat_to_image(sim.float().cpu().numpy(), *upright.size, view)


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
