"""Zero-shot image classification with a dual encoder (CLIP): prompt templates and template ensembling.

Each class name is put into every prompt template ("a photo of a {}."); the text embeddings of
one class are L2-normalized, averaged over templates and renormalized (CLIP's ensembling), and an
image is scored by ``exp(logit_scale) * image_embed @ class_embed`` (softmax = class probabilities):
:mod:`vlp.tasks.zeroshot.head`. Metrics (:mod:`vlp.metrics.classification`): top-1 and top-5
accuracy (top-k with ``k = min(5, classes)``), mean per-class accuracy (= mean per-class recall) and
per-class recall, in percent, and the confusion matrix (:func:`save_confusion_png` draws it);
``chance``: uniform guessing (``k / C``) and always answering the most frequent class.

Labelled images come from an image folder with one sub-folder per class (``image_folder``, as
torchvision's ImageFolder and clip_benchmark lay it out; the class is the folder, named by the folder
or by a class-names file) or from COCO instances (ShapesWorld: ``options.format: instances``;
:mod:`vlp.tasks.zeroshot.labels`), where the label of an image is its main object (``objects: largest``,
the biggest box) or the image is used only when it holds exactly one object (``objects: single``).
``by`` picks what is classified: the ``shape`` (the COCO category), the ``color`` (the
``attributes.color`` ShapesWorld writes) or the pair (``color_shape``, class names like "red
circle"). Colours are ShapesWorld's vocabulary (``meta.json``) when the data root has one, else the
colours seen in the data.

Fine-tuning (``vlp finetune zeroshot-clip-tiny.yaml``) trains both towers contrastively against
the prompts of every class (one random template per class and step, as FLYP does): cross-entropy
of the image-to-class-prompt logits. Classes without training images (e.g. ShapesWorld's held-out
colour-shape pairs) still act as negatives, so the held-out split tests composition. The linear
probe and few-shot protocols are in :mod:`vlp.tasks.probe`.
Predict: :func:`classify` ``(model, tok, images, class_names, templates) -> (labels, probs)``.
"""

from vlp.tasks.zeroshot.evaluate import evaluate, save_confusion_png, zero_shot_scores
from vlp.tasks.zeroshot.finetune import PromptContrastive, ZeroShotTask, build_finetuning
from vlp.tasks.zeroshot.head import (
    TEMPLATE_SETS,
    class_embeddings,
    encode_texts,
    ensemble,
    logit_scale,
    resolve_templates,
)
from vlp.tasks.zeroshot.labels import (
    BY,
    batch_labels,
    class_vocabulary,
    dataset_colors,
    encode_images,
    folder_labels,
    labelled_features,
    labelled_subset,
    record_label,
)
from vlp.tasks.zeroshot.predict import classify, predict

__all__ = [
    "BY",
    "TEMPLATE_SETS",
    "PromptContrastive",
    "ZeroShotTask",
    "batch_labels",
    "build_finetuning",
    "class_embeddings",
    "class_vocabulary",
    "classify",
    "dataset_colors",
    "encode_images",
    "encode_texts",
    "ensemble",
    "evaluate",
    "folder_labels",
    "labelled_features",
    "labelled_subset",
    "logit_scale",
    "predict",
    "record_label",
    "resolve_templates",
    "save_confusion_png",
    "zero_shot_scores",
]
