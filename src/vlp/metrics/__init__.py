"""Downstream metrics: retrieval recall, VQA accuracy, box IoU, caption metrics.

Every function here is model-independent and exact with respect to the
reference protocol it names (Karpathy-split retrieval, the official VQA script,
the COCO caption evaluation).
"""

from vlp.metrics.bleu import corpus_bleu
from vlp.metrics.boxes import (
    accuracy_at_iou,
    box_area,
    box_convert,
    box_iou,
    cxcywh_to_xyxy,
    elementwise_box_iou,
    elementwise_generalized_box_iou,
    generalized_box_iou,
    giou_loss,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)
from vlp.metrics.cider import cider_d
from vlp.metrics.coco_caption import caption_metrics, pycocoevalcap_available, resolve_backend
from vlp.metrics.masks import largest_component, mask_to_box
from vlp.metrics.ptb_tokenize import ptb_tokenize, tokenize_captions
from vlp.metrics.ranking import average_precision
from vlp.metrics.retrieval import retrieval_metrics
from vlp.metrics.rouge import rouge_l
from vlp.metrics.vqa import normalize_answer, soft_score, vqa_accuracy, vqa_score

__all__ = [
    "accuracy_at_iou",
    "average_precision",
    "box_area",
    "box_convert",
    "box_iou",
    "caption_metrics",
    "cider_d",
    "corpus_bleu",
    "cxcywh_to_xyxy",
    "elementwise_box_iou",
    "elementwise_generalized_box_iou",
    "generalized_box_iou",
    "giou_loss",
    "largest_component",
    "mask_to_box",
    "normalize_answer",
    "ptb_tokenize",
    "pycocoevalcap_available",
    "resolve_backend",
    "retrieval_metrics",
    "rouge_l",
    "soft_score",
    "tokenize_captions",
    "vqa_accuracy",
    "vqa_score",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_xywh",
]
