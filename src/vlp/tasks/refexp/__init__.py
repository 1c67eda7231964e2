"""Referring expressions (RefCOCO-style): find the box an expression refers to; accuracy at IoU >= 0.5.

Three heads, chosen by the model's visual representation (``mode: auto``):

- ``regions`` (UNITER, VisualBERT, LXMERT, OSCAR on detector regions): the ``region_score`` head
  gives one logit per fused region token; softmax over the image's regions and cross-entropy to
  the region whose box has the highest IoU with the target box (as UNITER and MAttNet train on
  detected regions). The prediction is the box of the arg-max region.
- ``box`` (patch and grid models: ViLT, Pixel-BERT, METER, ALBEF, ...): the ``box`` head regresses
  a normalized ``(x1, y1, x2, y2)`` box from the fused pooled output ([CLS]), trained with
  ``l1_weight * L1 + giou_weight * (1 - GIoU)`` (DETR's weights 5 and 2 by default; L1 is summed
  over the four coordinates and averaged over expressions, as DETR does).
- ``proposals`` (patch and grid models with candidate boxes; the ``auto`` choice for them): the
  ``proposal_score`` head scores every candidate box of the image (RefCOCO's annotated objects),
  its feature ROIAlign-pooled from the image token map; softmax over the candidates and
  cross-entropy to the best-IoU one, as for regions (:mod:`vlp.tasks.refexp.proposals`).

Evaluation follows the RefCOCO protocol: one prediction per expression (sentence), accuracy =
fraction with IoU >= 0.5 against the ground-truth box; mean IoU is reported too. IoU is computed
as the official evaluation does, in float64 pixels of the original image
(:func:`vlp.metrics.refexp.pixel_ious`): a
pixel IoU of exactly 0.5 is a hit, which float32 on normalized coordinates would round either way.
Samples without a record giving the image size fall back to float64 in the model's view. ``chance``: picking a
region or candidate uniformly at random (regions, proposals) or a box of the mean target size at
the image centre (box).

Data: ``data.type: refcoco`` (``refs(unc).p`` + ``instances.json``) or ShapesWorld with
``options.format: refcoco``; region models also need region files (``options.regions: true``
for ShapesWorld's oracle-detector ``regions/*.npz``, ``paths.regions`` otherwise).
Predict: :func:`locate` ``(model, tokenizer, image, expression) -> (x1, y1, x2, y2)`` in pixels.

Files: ``proposals`` (candidate features ROIAlign-pooled from the token map, scored), ``head`` (the
modes, the three heads, their predictions), ``inputs`` (a user's images, region files and candidate
boxes -> a batch), ``finetune``, ``evaluate`` and ``predict``; the metrics are in
:mod:`vlp.metrics.refexp`.
"""

from vlp.metrics.refexp import centre_box_chance, pixel_ious, view_box_to_pixels
from vlp.tasks.common import load_upright
from vlp.tasks.refexp.evaluate import eval_data_for, evaluate
from vlp.tasks.refexp.finetune import (
    BoxRegressor,
    ProposalScorer,
    RefExpTask,
    RegionScorer,
    box_regression_loss,
    build_finetuning,
    choice_loss,
)
from vlp.tasks.refexp.head import (
    MODES,
    ensure_refexp_head,
    head_name,
    is_region_model,
    predict_normalized,
    proposal_cells,
    region_scores,
    region_targets,
    resolve_mode,
    trained_mode,
)
from vlp.tasks.refexp.inputs import pixels_to_view_box
from vlp.tasks.refexp.predict import locate, predict
from vlp.tasks.refexp.proposals import proposal_scores

__all__ = [
    "MODES",
    "BoxRegressor",
    "ProposalScorer",
    "RefExpTask",
    "RegionScorer",
    "box_regression_loss",
    "build_finetuning",
    "centre_box_chance",
    "choice_loss",
    "ensure_refexp_head",
    "eval_data_for",
    "evaluate",
    "head_name",
    "is_region_model",
    "load_upright",
    "locate",
    "pixel_ious",
    "pixels_to_view_box",
    "predict",
    "predict_normalized",
    "proposal_cells",
    "proposal_scores",
    "region_scores",
    "region_targets",
    "resolve_mode",
    "trained_mode",
    "view_box_to_pixels",
]
