"""Referring-expression inference on raw inputs: images (or region files) + expressions -> pixel boxes.

:func:`predict` batches (image, expression) pairs through a fine-tuned refexp model (see
:mod:`vlp.tasks.refexp` for the two heads) and maps the normalized boxes back to pixels of the
original image; :func:`locate` is the one-pair form. :func:`load_upright` is shared with the
perception task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlp.data.batch import Batch


def load_upright(images: list[Any], max_pixels: int = 89_478_485) -> list[Any]:
    """PIL images or paths -> upright RGB PIL images (so their ``size`` is what pixels refer to)."""
    from PIL import Image

    from vlp.data.image_io import ImageError, decode_image

    if isinstance(images, (str, Path, Image.Image)):
        raise TypeError("images: expected a list of PIL images or paths, got a single image; wrap it in a list")
    out = []
    for i, image in enumerate(images):
        if not isinstance(image, (str, Path, Image.Image)):
            raise TypeError(f"images[{i}]: expected a PIL image or a path, got {type(image).__name__}")
        try:
            out.append(decode_image(image, None, max_pixels)[0])
        except ImageError as err:
            raise ValueError(f"images[{i}]: cannot read {image!s:.80}: {err}") from err
    return out


def _region_batch(regions: list[Any], sizes: list[tuple[int, int] | None]) -> tuple[Batch, list[tuple[float, float]]]:
    """Region files / ``{"features" (R, F), "boxes" (R, 4) pixels}`` dicts -> padded Batch + image sizes."""
    import numpy as np

    from vlp.data.collate import collate
    from vlp.data.sources.regions import RegionError, load_regions

    samples, out_sizes = [], []
    for i, (item, size) in enumerate(zip(regions, sizes)):
        if isinstance(item, (str, Path)):
            try:
                loaded = load_regions(item)
                with np.load(item, allow_pickle=False) as npz:
                    size = size or (float(npz["image_w"]), float(npz["image_h"]))
            except (RegionError, KeyError) as err:
                raise ValueError(f"regions[{i}]: {err}") from err
            features, boxes = torch.from_numpy(loaded["features"]), torch.from_numpy(loaded["boxes"])
        elif isinstance(item, dict) and "features" in item and "boxes" in item and size is not None:
            features = torch.as_tensor(np.asarray(item["features"]), dtype=torch.float32)
            boxes = (torch.as_tensor(np.asarray(item["boxes"]), dtype=torch.float32) / torch.tensor(size * 2)).clamp(
                0, 1
            )
        else:
            raise TypeError(f"regions[{i}]: expected a region .npz path, or a dict with 'features' and 'boxes' "
                            "(pixels) next to its image")  # fmt: skip
        if features.ndim != 2 or boxes.shape != (features.shape[0], 4):
            raise ValueError(f"regions[{i}]: features (R, F) and boxes (R, 4) do not match")
        samples.append({"region_features": features, "region_boxes": boxes.float(), "meta": {}})
        out_sizes.append(size)
    return collate(samples), out_sizes


def pixels_to_view_box(box: Any, width: float, height: float, eval_crop: str = "resize") -> list[float]:
    """A pixel xyxy box of the original image -> normalized xyxy in the model's view, clipped to it
    (the inverse of :func:`vlp.tasks.refexp.view_box_to_pixels`)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if eval_crop == "center":
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        out = [(x1 - left) / side, (y1 - top) / side, (x2 - left) / side, (y2 - top) / side]
    else:
        out = [x1 / width, y1 / height, x2 / width, y2 / height]
    return [min(1.0, max(0.0, v)) for v in out]


def _candidate_boxes(candidates: list[Any], sizes: list[tuple[int, int]], eval_crop: str) -> tuple[torch.Tensor, ...]:
    """Per-image ``(R_i, 4)`` pixel boxes -> padded normalized ``(B, R, 4)`` boxes and keep-mask ``(B, R)``."""
    import numpy as np

    from vlp.data.collate import pad_sample_regions

    samples = []
    for i, (boxes, (w, h)) in enumerate(zip(candidates, sizes)):
        array = np.asarray(boxes, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != 4 or not len(array):
            raise ValueError(
                f"candidates[{i}]: expected a non-empty (R, 4) list of xyxy pixel boxes, got {boxes!r:.80}"
            )
        samples.append({"region_boxes": torch.tensor([pixels_to_view_box(b, w, h, eval_crop) for b in array.tolist()])})
    padded = pad_sample_regions(samples)
    return padded["region_boxes"], padded["region_mask"]


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
    from vlp.tasks.common import check_texts, model_data_config, preprocess_images
    from vlp.tasks.refexp import predict_normalized, trained_mode, view_box_to_pixels  # refexp re-exports this module

    texts = check_texts(texts, "texts")
    if len(images) != len(texts):
        raise ValueError(f"got {len(images)} images but {len(texts)} expressions; pass one expression per image")
    mode = trained_mode(model, mode)
    config = model_data_config(model)
    device = device if device is not None else next(model.parameters()).device
    if mode == "regions":
        if regions is None or len(regions) != len(texts):
            raise ValueError("predict (region model): pass regions=[one region file or dict per image]")
        present = [i for i, image in enumerate(images) if image is not None]
        upright = dict(zip(present, load_upright([images[i] for i in present], config.max_image_pixels)))
        sizes = [upright[i].size if i in upright else None for i in range(len(texts))]
        batch, sizes = _region_batch(list(regions), sizes)
    else:
        upright = load_upright(list(images), config.max_image_pixels)
        sizes = [im.size for im in upright]
        batch = Batch(images=preprocess_images(upright, config))
        if mode == "proposals":
            if candidates is None or len(candidates) != len(texts):
                raise ValueError("predict (proposals): pass candidates=[one list of xyxy pixel boxes per image]")
            boxes, keep = _candidate_boxes(list(candidates), sizes, config.transform.eval_crop)
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
    crop = "resize" if mode == "regions" else config.transform.eval_crop  # region boxes are whole-image
    return [tuple(view_box_to_pixels(b, w, h, crop)) for b, (w, h) in zip(boxes, sizes)]


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


__all__ = ["load_upright", "locate", "pixels_to_view_box", "predict"]
