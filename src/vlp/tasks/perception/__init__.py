"""Zero-shot perception beyond labels (MaskCLIP-style): a heat map, a mask and a box for a text query.

A patch-based dual encoder (CLIP ViT; also the dual side of ALBEF/BLIP) gives dense features
(:meth:`vlp.vision.patch.PatchEncoder.dense_features`: the last layer's value path, the final
norm), each projected by the image projection into the joint space. Their cosine similarity with
the query's text embedding is an ``(h, w)`` map over the patch grid, upsampled bilinearly to the
image. Thresholding it (Otsu's threshold by default, or ``mean + k * std``) gives a mask; the box is
the bounding box of the mask's largest 4-connected component (:mod:`vlp.tasks.perception.head`).

Evaluation on COCO instances (ShapesWorld: ``options.format: instances``): every object whose
(colour, shape) pair is unique in its image is one query ("red circle", put into the prompt
templates and ensembled as in :mod:`vlp.tasks.zeroshot`); the box is scored by IoU with the
ground-truth box. Metrics (percent): ``accuracy`` (IoU >= 0.5), ``miou`` and ``pointing`` (the heat
map's peak lies inside the box). ``chance``: a box of the mean ground-truth size at the image
centre (accuracy, mIoU) and a uniformly random point (pointing: the mean box area fraction).
Perception is evaluation-only (no fine-tuning step).
Predict: :func:`heatmap` ``(model, tok, image, text) -> (H, W)`` array, :func:`locate_text`,
:func:`save_overlay` (PNG of the image with the heat map and box drawn over it).
"""

from vlp.tasks.perception.evaluate import evaluate, evaluate_thresholds, unique_queries
from vlp.tasks.perception.head import (
    check_dense,
    dense_similarity,
    heat_box,
    heat_to_image,
    otsu_threshold,
    threshold_mask,
)
from vlp.tasks.perception.predict import colorize, heatmap, locate_text, save_overlay

__all__ = [
    "check_dense",
    "colorize",
    "dense_similarity",
    "evaluate",
    "evaluate_thresholds",
    "heat_box",
    "heat_to_image",
    "heatmap",
    "locate_text",
    "otsu_threshold",
    "save_overlay",
    "threshold_mask",
    "unique_queries",
]
