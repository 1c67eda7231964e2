"""VQA and referring expressions for a dual encoder (CLIP), which has no fusion module: a small MLP
on the two global embeddings, ``[image, text, image * text, |image - text|]`` (the classic late-fusion
VQA baseline; "How Much Can CLIP Benefit Vision-and-Language Tasks?" feeds CLIP features to heads
the same way). Both towers are fine-tuned with it.

This is how the taxonomy benchmark gives the dual-encoder family a VQA and a referring-expression
score at all: the survey's claim is that such models are fast but shallow for these tasks, and
only a number shows how shallow. Losses and metrics are the tasks' own: soft-target BCE x answers
(:mod:`vlp.tasks.vqa`), L1 + GIoU (:func:`vlp.tasks.refexp.box_regression_loss`), official VQA
accuracy and accuracy at IoU >= 0.5.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlp.data.batch import Batch
from vlp.models.heads import BoxHead
from vlp.objectives.base import logs_to_floats


def joint_features(model: Any, batch: Batch) -> torch.Tensor:
    """``(B, 4E)``: both L2-normalized embeddings, their product and absolute difference."""
    image = model.encode_image(batch)
    text = model.encode_text(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    return torch.cat([image, text, image * text, (image - text).abs()], dim=-1)


class LateFusionVQA(nn.Module):
    """``forward(batch) -> (loss, logs)``: answer logits from an MLP on :func:`joint_features`."""

    def __init__(self, model: nn.Module, num_answers: int, hidden: int = 0) -> None:
        super().__init__()
        self.model = model
        width = 4 * model.cfg.embed_dim
        hidden = hidden or 4 * width
        self.head = nn.Sequential(nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU(),
                                  nn.Linear(hidden, num_answers))  # fmt: skip

    def logits(self, batch: Batch) -> torch.Tensor:
        return self.head(joint_features(self.model, batch))

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        targets = batch.answer_targets
        logits = self.logits(batch).float()
        loss = F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]
        with torch.no_grad():
            score = targets.gather(1, logits.argmax(1, keepdim=True)).mean()
        return loss, logs_to_floats({"vqa_score": score})


class LateFusionBox(nn.Module):
    """``forward(batch) -> (loss, logs)``: a box regressed from :func:`joint_features` (L1 + GIoU)."""

    def __init__(self, model: nn.Module, l1_weight: float = 5.0, giou_weight: float = 2.0) -> None:
        super().__init__()
        self.model = model
        width = 4 * model.cfg.embed_dim
        self.head = BoxHead(width, 2 * width)
        self.l1_weight, self.giou_weight = l1_weight, giou_weight

    def boxes(self, batch: Batch) -> torch.Tensor:
        return self.head(joint_features(self.model, batch)).float()

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        from vlp.metrics import elementwise_box_iou
        from vlp.tasks.refexp import box_regression_loss

        pred = self.boxes(batch)
        loss, terms = box_regression_loss(pred, batch.target_boxes.float(), self.l1_weight, self.giou_weight)
        with torch.no_grad():
            acc = (elementwise_box_iou(pred, batch.target_boxes) >= 0.5).float().mean()
        return loss, logs_to_floats({**terms, "acc": acc})


@torch.no_grad()
def evaluate_vqa(module: LateFusionVQA, batches: Iterable[Batch], vocab: list[str]) -> dict[str, Any]:
    """Official VQA accuracy (percent) of the late-fusion classifier; ``chance``: the answer prior."""
    from vlp.metrics import vqa_score
    from vlp.tasks.vqa import answer_prior

    module.eval()
    preds, metas = [], []
    for batch in batches:
        preds.extend(vocab[i] for i in module.logits(batch).argmax(1).tolist())
        metas.extend(batch.meta)
    answers = [list(m["answers"]) for m in metas]
    kinds = [str(m.get("answer_type", "")) for m in metas]
    prior = vqa_score(answer_prior(answers, kinds), answers, answer_types=kinds)
    scored = vqa_score(preds, answers, answer_types=kinds)
    return {"overall": scored["overall"], "per_answer_type": scored["per_answer_type"],
            "n_questions": len(metas), "chance": {"overall": prior["overall"]}}  # fmt: skip


@torch.no_grad()
def evaluate_box(module: LateFusionBox, batches: Iterable[Batch]) -> dict[str, Any]:
    """Accuracy at IoU >= 0.5 and mean IoU (percent); ``chance``: a mean-size box at the centre."""
    from vlp.metrics import elementwise_box_iou
    from vlp.tasks.refexp import centre_box_chance

    module.eval()
    ious, targets = [], []
    for batch in batches:
        target = batch.target_boxes.float()
        ious.append(elementwise_box_iou(module.boxes(batch), target))
        targets.append(target)
    iou = torch.cat(ious).double()
    return {"accuracy": 100 * (iou >= 0.5).double().mean().item(), "miou": 100 * iou.mean().item(),
            "n_expressions": int(iou.numel()), "chance": centre_box_chance(torch.cat(targets))}  # fmt: skip


__all__ = ["LateFusionBox", "LateFusionVQA", "evaluate_box", "evaluate_vqa", "joint_features"]
