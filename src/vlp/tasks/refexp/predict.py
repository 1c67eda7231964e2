"""Referring-expression inference on raw inputs: images (or region files) + expressions -> pixel boxes.

:func:`predict` batches (image, expression) pairs through a fine-tuned refexp model (see
:mod:`vlp.tasks.refexp` for the heads) and maps the normalized boxes back to pixels of the
original image; :func:`locate` is the one-pair form.
"""

from __future__ import annotations

from typing import Any

import torch

from vlp.data.batch import Batch
from vlp.data.transforms import eval_geometry
from vlp.metrics.refexp import view_box_to_pixels
from vlp.tasks.common import check_texts, load_upright, model_data_config, preprocess_images
from vlp.tasks.refexp.head import predict_normalized, trained_mode
from vlp.tasks.refexp.inputs import candidate_boxes, region_batch


def predict(
    model: Any,
    tokenizer: Any,
    images: list[Any],
    texts: list[str],
    *,
    regions: list[Any] | None = None,
    candidates: list[Any] | None = None,
    mode: str = "auto",
    device: Any = None,
) -> list[tuple[float, float, float, float]]:
    """One box ``(x1, y1, x2, y2)`` in pixels of the original image per (image, expression) pair.

    Patch/grid models read the images (PIL images or paths); with a ``proposal_score`` head they
    also need ``candidates``: one list of candidate xyxy pixel boxes per image (e.g. its annotated
    objects or a detector's boxes), and answer one of them. Region models read ``regions``: one
    region ``.npz`` path or ``{"features": (R, F), "boxes": (R, 4) pixels}`` per image (an image
    entry may then be None when the region file gives the image size).
    """
    texts = check_texts(texts, "texts")
    if len(images) != len(texts):
        raise ValueError(f"got {len(images)} images but {len(texts)} expressions; pass one expression per image")
    mode = trained_mode(model, mode)
    config = model_data_config(model)
    geometry = eval_geometry(config.image_size, config.transform)
    device = device if device is not None else next(model.parameters()).device
    if mode == "regions":
        if regions is None or len(regions) != len(texts):
            raise ValueError("predict (region model): pass regions=[one region file or dict per image]")
        present = [i for i, image in enumerate(images) if image is not None]
        upright = dict(zip(present, load_upright([images[i] for i in present], config.max_image_pixels)))
        sizes = [upright[i].size if i in upright else None for i in range(len(texts))]
        batch, sizes = region_batch(list(regions), sizes)
    else:
        upright = load_upright(list(images), config.max_image_pixels)
        sizes = [im.size for im in upright]
        batch = Batch(images=preprocess_images(upright, config))
        if mode == "proposals":
            if candidates is None or len(candidates) != len(texts):
                raise ValueError("predict (proposals): pass candidates=[one list of xyxy pixel boxes per image]")
            boxes, keep = candidate_boxes(list(candidates), [geometry.view(w, h) for w, h in sizes])
            batch = batch.replace(region_boxes=boxes, region_mask=keep)
    tok = tokenizer(texts, max_length=config.max_text_len)
    batch = batch.replace(input_ids=tok.input_ids, attention_mask=tok.attention_mask.bool(),
                          token_type_ids=tok.token_type_ids).to(device)  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            boxes = predict_normalized(model, batch, mode).cpu().tolist()
    finally:
        model.train(was_training)
    # region boxes are normalized to the whole image; the others to the model's view of it
    views = [(0.0, 0.0, w, h) if mode == "regions" else geometry.view(w, h) for w, h in sizes]
    return [tuple(view_box_to_pixels(b, view)) for b, view in zip(boxes, views)]


def locate(
    model: Any,
    tokenizer: Any,
    image: Any,
    expression: str,
    *,
    regions: Any = None,
    candidates: Any = None,
    mode: str = "auto",
) -> tuple[float, float, float, float]:
    """The box ``(x1, y1, x2, y2)`` in pixels that ``expression`` refers to in ``image`` (PIL image or
    path). Region models also need ``regions`` (the image's region ``.npz`` or a features/boxes dict),
    models fine-tuned with ``mode: proposals`` the image's ``candidates`` (xyxy pixel boxes)."""
    return predict(model, tokenizer, [image], [expression], regions=None if regions is None else [regions],
                   candidates=None if candidates is None else [candidates], mode=mode)[0]  # fmt: skip


__all__ = ["locate", "predict"]
