"""Multi-label image tagging: which of the C object categories appear in an image (COCO instances).

The image tower alone is trained and evaluated: its tokens are pooled the way the model's
``image_pool`` says (or the task's ``pool``: ``first`` / ``max`` / ``mean``), *before* any
dual-encoder projection, and the ``tagging`` head (``Linear(W, C)``, :mod:`vlp.models.heads`) gives
one logit per category. The loss is binary cross-entropy against the multi-hot targets of the
categories present, averaged over images and categories. Text parts and the fusion module are
never run, so only the tower and the head get gradients. This is both a downstream evaluation
(COCO multi-label classification, mAP) and a supervised warm start of the tower before
vision-language pretraining, as ALBEF's ViT starts from ImageNet-supervised weights.

Targets come from each sample's ``meta["labels"]`` (contiguous category indices); objects that a
crop removed from view (``meta["box_keep"]`` False) are absent. ``min_area`` (pixels of the model
input, ``data.image_size`` squared) *ignores* smaller objects: a category whose only objects in an
image are smaller is left out of the loss and the metrics for that image (neither present nor
absent), since calling a visible object absent would be a wrong label.

Evaluation: mAP (mean over categories of the non-interpolated average precision,
:func:`average_precision`), per-label accuracy and exact-match ratio at probability threshold 0.5,
in percent. Categories without a positive in the split have no AP; they are skipped and named.
``chance``: a constant-score predictor's mAP (= mean prevalence, ties being one block) and the
per-label accuracy / exact match of always answering each label's majority value.

Predict: :func:`predict` ``(model, images) -> [[(class name, probability), ...] per image]``.
"""

from vlp.tasks.tagging.evaluate import evaluate
from vlp.tasks.tagging.finetune import TaggingClassifier, TaggingTask, build_finetuning
from vlp.tasks.tagging.head import batch_targets, dataset_categories, ensure_tagging_head, head_options, tag_logits
from vlp.tasks.tagging.predict import predict

__all__ = [
    "TaggingClassifier",
    "TaggingTask",
    "batch_targets",
    "build_finetuning",
    "dataset_categories",
    "ensure_tagging_head",
    "evaluate",
    "head_options",
    "predict",
    "tag_logits",
]
