"""The referring-expression heads (``region_score``, ``box``, ``proposal_score``), the mode that
picks one, and the normalized box each predicts."""

from __future__ import annotations

from typing import Any

import torch

from vlp.config import ConfigError, family_name
from vlp.data.batch import Batch
from vlp.metrics.boxes import elementwise_box_iou
from vlp.models.heads import HeadContext, build_heads, validate_heads
from vlp.tasks.common import has_fusion
from vlp.tasks.refexp.proposals import fused_image_width, proposal_scores

MODES = ("auto", "regions", "box", "proposals")


def is_region_model(model: Any) -> bool:
    """True when the model's visual tokens are detector regions (``model.vision.type: region``)."""
    vision = getattr(getattr(model, "cfg", None), "vision", None)
    return vision is not None and family_name(vision) == "region"


def resolve_mode(model: Any, mode: str = "auto") -> str:
    """``auto`` -> ``regions`` for region models, else ``proposals`` (candidate boxes come with
    RefCOCO-format data); checks the model can run the mode."""
    if mode not in MODES:
        raise ConfigError(f"refexp mode: {mode!r} is not one of {', '.join(MODES)}")
    if not has_fusion(model):
        raise ConfigError("refexp needs a fusion module (a dual encoder has no joint text-image tokens)")
    if mode == "auto":
        return "regions" if is_region_model(model) else "proposals"
    if mode == "regions" and not is_region_model(model):
        raise ConfigError("refexp mode regions: the model does not read detector regions (model.vision.type)")
    if mode == "proposals" and is_region_model(model):
        raise ConfigError("refexp mode proposals: region models score their regions (mode: regions)")
    return mode


def proposal_cells(model: Any) -> int:
    """ROIAlign bins per side of a model's ``proposal_score`` head (from its pooled feature width)."""
    ratio = model.heads["proposal_score"].feature.in_features // fused_image_width(model)
    return max(1, round(ratio**0.5))


def head_name(mode: str) -> str:
    """The head a mode trains and predicts with."""
    return {"regions": "region_score", "proposals": "proposal_score"}.get(mode, "box")


def ensure_refexp_head(model: Any, mode: str, hidden: int = 0, cells: int = 2) -> None:
    """Add the ``region_score``, ``box`` or ``proposal_score`` head when the model lacks it; the
    model config is updated too, so the saved recipe rebuilds the same head."""
    name = head_name(mode)
    if name in model.heads:
        return
    options: dict[str, Any] = {"hidden": hidden} if hidden else {}
    if mode == "proposals":  # the pooled width is fixed by the model, not by the fusion alone
        options["feature_dim"] = fused_image_width(model) * cells * cells
    fusion = model.fusion
    ctx = HeadContext(pooled_dim=fusion.pooled_dim, image_dim=getattr(fusion, "image_dim", 0) or 0)
    if mode == "regions" and not ctx.image_dim:
        raise ConfigError("refexp mode regions: the fusion module does not update the image tokens")
    device = next(model.parameters()).device
    model.heads[name] = build_heads({name: options}, ctx)[name].to(device)
    model.cfg.heads[name] = validate_heads({name: options})[name]


def _fuse(model: Any, batch: Batch) -> tuple[Any, Any]:
    ids, mask, types = model.text_inputs(batch)
    image = model.image_tokens(batch)
    return model.fuse(model.text_tokens(ids, mask, types), mask, image), image


def region_scores(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores (B, R), keep (B, R))``: one logit per region, ``-inf`` at padded regions."""
    if batch.region_features is None and batch.images is None:
        raise ConfigError(
            "refexp (regions): the batch has no region features; evaluate region models on data with region "
            "files (ShapesWorld: data.options.regions=true; refcoco: data.paths.regions)"
        )
    fused, image = _fuse(model, batch)
    if fused.image is None:
        raise ConfigError("refexp (regions): the fusion module returns no fused image tokens")
    keep = batch.region_mask if batch.region_mask is not None else image.mask[:, -fused.image.shape[1] :]
    tokens = fused.image[:, fused.image.shape[1] - keep.shape[1] :]  # drop prefix tokens, if any
    scores = model.heads["region_score"](tokens).squeeze(-1).float()
    return scores.masked_fill(~keep, float("-inf")), keep


def region_targets(region_boxes: torch.Tensor, keep: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
    """``(B,)`` index of the kept region with the highest IoU with the target box (first on ties).

    region_boxes ``(B, R, 4)``, keep ``(B, R)`` bool, target_boxes ``(B, 4)``, all xyxy.
    """
    iou = elementwise_box_iou(region_boxes, target_boxes[:, None, :]).masked_fill(~keep, -1.0)
    return iou.argmax(dim=1)


def predict_normalized(model: Any, batch: Batch, mode: str) -> torch.Tensor:
    """``(B, 4)`` normalized xyxy boxes: the arg-max region's/candidate's box, or the box head's output."""
    if mode == "regions":
        scores, _ = region_scores(model, batch)
    elif mode == "proposals":
        scores, _ = proposal_scores(model, batch, proposal_cells(model))
    else:
        fused, _ = _fuse(model, batch)
        return model.heads["box"](fused.pooled).float()
    index = scores.argmax(dim=1)
    return batch.region_boxes[torch.arange(len(index), device=index.device), index].float()


def trained_mode(model: Any, mode: str = "auto") -> str:
    """The mode to evaluate/predict with; the model must carry that mode's trained head.

    ``auto`` on a patch/grid model means the head it was fine-tuned with: ``proposals`` if it has
    that head, else ``box`` if it has a box head (models fine-tuned before proposals existed)."""
    asked = mode
    mode = resolve_mode(model, mode)
    if asked == "auto" and mode == "proposals" and head_name(mode) not in model.heads and "box" in model.heads:
        mode = "box"
    if head_name(mode) not in model.heads:
        raise ConfigError(
            f"refexp {mode}: the model has no {head_name(mode)} head; fine-tune it first "
            "(e.g. vlp finetune refexp-vilt-tiny.yaml / refexp-uniter-tiny.yaml)"
        )
    return mode


__all__ = [
    "MODES",
    "ensure_refexp_head",
    "head_name",
    "is_region_model",
    "predict_normalized",
    "proposal_cells",
    "region_scores",
    "region_targets",
    "resolve_mode",
    "trained_mode",
]
