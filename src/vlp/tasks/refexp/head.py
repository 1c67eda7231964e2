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
  cross-entropy to the best-IoU one, as for regions (:mod:`vlp.tasks.refexp_proposals`).

Evaluation follows the RefCOCO protocol: one prediction per expression (sentence), accuracy =
fraction with IoU >= 0.5 against the ground-truth box; mean IoU is reported too. IoU is computed
as the official evaluation does, in float64 pixels of the original image (:func:`pixel_ious`): a
pixel IoU of exactly 0.5 is a hit, which float32 on normalized coordinates would round either way.
Samples without a record giving the image size fall back to float64 in the model's view. ``chance``: picking a
region or candidate uniformly at random (regions, proposals) or a box of the mean target size at
the image centre (box).

Data: ``data.type: refcoco`` (``refs(unc).p`` + ``instances.json``) or ShapesWorld with
``options.format: refcoco``; region models also need region files (``options.regions: true``
for ShapesWorld's oracle-detector ``regions/*.npz``, ``paths.regions`` otherwise).
Predict: :func:`locate` ``(model, tokenizer, image, expression) -> (x1, y1, x2, y2)`` in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vlp.config import ConfigError, family_name, from_dict
from vlp.data.batch import Batch
from vlp.objectives.base import logs_to_floats

# inference on raw images lives in its own module; re-exported so ``vlp.tasks.refexp.predict`` keeps working
from vlp.tasks.refexp_predict import load_upright as load_upright
from vlp.tasks.refexp_predict import locate, predict
from vlp.tasks.refexp_proposals import ProposalScorer, proposal_scores

MODES = ("auto", "regions", "box", "proposals")


@dataclass
class RefExpTask:
    """The ``task:`` section of a referring-expression recipe."""

    type: str = "refexp"
    mode: Literal["auto", "regions", "box", "proposals"] = "auto"
    hidden: int = 0  # width of a new head's MLP (region_score: 0 = linear; box, proposal_score: 0 = pooled width)
    cells: int = 2  # proposals: ROIAlign bins per side pooled from each candidate box
    l1_weight: float = 5.0
    giou_weight: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.cells, int) or self.cells < 1:
            raise ConfigError(f"task.cells={self.cells!r}: expected an integer >= 1 (ROIAlign bins per side)")


def is_region_model(model: Any) -> bool:
    """True when the model's visual tokens are detector regions (``model.vision.type: region``)."""
    vision = getattr(getattr(model, "cfg", None), "vision", None)
    return vision is not None and family_name(vision) == "region"


def resolve_mode(model: Any, mode: str = "auto") -> str:
    """``auto`` -> ``regions`` for region models, else ``proposals`` (candidate boxes come with
    RefCOCO-format data); checks the model can run the mode."""
    from vlp.tasks.common import has_fusion

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
    from vlp.tasks.refexp_proposals import fused_image_width

    ratio = model.heads["proposal_score"].feature.in_features // fused_image_width(model)
    return max(1, round(ratio**0.5))


def head_name(mode: str) -> str:
    return {"regions": "region_score", "proposals": "proposal_score"}.get(mode, "box")


def ensure_refexp_head(model: Any, mode: str, hidden: int = 0, cells: int = 2) -> None:
    """Add the ``region_score``, ``box`` or ``proposal_score`` head when the model lacks it; the
    model config is updated too, so the saved recipe rebuilds the same head."""
    from vlp.models.heads import HeadContext, build_heads
    from vlp.tasks.refexp_proposals import fused_image_width

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
    model.cfg.heads[name] = options


# ----------------------------------------------------------------------------- the two heads


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
    from vlp.metrics import elementwise_box_iou

    iou = elementwise_box_iou(region_boxes, target_boxes[:, None, :]).masked_fill(~keep, -1.0)
    return iou.argmax(dim=1)


def box_regression_loss(
    pred: torch.Tensor, target: torch.Tensor, l1_weight: float = 5.0, giou_weight: float = 2.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``l1_weight * L1 + giou_weight * (1 - GIoU)`` of ``(B, 4)`` xyxy boxes, each term averaged over
    boxes (L1 summed over the coordinates); returns the loss and its two unweighted terms."""
    from vlp.metrics import giou_loss

    l1 = (pred - target).abs().sum(-1).mean()
    giou = giou_loss(pred, target)
    return l1_weight * l1 + giou_weight * giou, {"l1": l1, "giou": giou}


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


class RegionScorer(nn.Module):
    """Fine-tuning module (region models): cross-entropy over regions to the best-IoU region.

    Logs ``acc``: share of expressions whose arg-max region has IoU >= 0.5 with the target.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if "region_score" not in model.heads:
            raise ConfigError("refexp regions: the model has no region_score head (model.heads.region_score: {})")
        self.model = model

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if batch.target_boxes is None or batch.region_boxes is None:
            raise ConfigError("refexp fine-tuning: the batch has no target_boxes/region_boxes (data: refcoco format)")
        scores, keep = region_scores(self.model, batch)
        return choice_loss(scores, keep, batch)


def choice_loss(scores: torch.Tensor, keep: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy over each image's candidates ``scores (B, R)`` (``keep (B, R)`` bool) to the candidate
    with the highest IoU with the target box, and ``acc``: the arg-max candidate's IoU >= 0.5."""
    from vlp.metrics import elementwise_box_iou

    targets = region_targets(batch.region_boxes, keep, batch.target_boxes)
    usable = keep.any(dim=1)  # an image without candidates has nothing to choose from
    if not bool(usable.any()):
        return scores.nan_to_num(0.0, 0.0, 0.0).sum() * 0.0, {"acc": 0.0}
    loss = F.cross_entropy(scores[usable], targets[usable])
    with torch.no_grad():
        picked = batch.region_boxes[torch.arange(len(scores), device=scores.device), scores.argmax(1)]
        acc = (elementwise_box_iou(picked, batch.target_boxes)[usable] >= 0.5).float().mean()
    return loss, logs_to_floats({"acc": acc})


class BoxRegressor(nn.Module):
    """Fine-tuning module (patch/grid models): L1 + GIoU on the box head's output (see the module doc).

    Logs the unweighted ``l1`` and ``giou`` terms and ``acc`` (IoU >= 0.5).
    """

    def __init__(self, model: nn.Module, l1_weight: float = 5.0, giou_weight: float = 2.0) -> None:
        super().__init__()
        if "box" not in model.heads:
            raise ConfigError("refexp box: the model has no box head (model.heads.box: {})")
        self.model = model
        self.l1_weight, self.giou_weight = l1_weight, giou_weight

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        from vlp.metrics import elementwise_box_iou

        if batch.target_boxes is None:
            raise ConfigError("refexp fine-tuning: the batch has no target_boxes (data must be in refcoco format)")
        pred = predict_normalized(self.model, batch, "box")
        loss, terms = box_regression_loss(pred, batch.target_boxes.float(), self.l1_weight, self.giou_weight)
        with torch.no_grad():
            acc = (elementwise_box_iou(pred, batch.target_boxes) >= 0.5).float().mean()
        return loss, logs_to_floats({**terms, "acc": acc})


def build_finetuning(
    task: dict[str, Any], recipe: Any, model: Any, tokenizer: Any, *, rank: int = 0, world_size: int = 1
) -> tuple[Any, Any]:
    """``(RegionScorer | BoxRegressor, refcoco train loader)`` for ``vlp finetune``; records the mode."""
    from vlp.data import build_loader

    opts = from_dict(RefExpTask, task, "task")
    mode = resolve_mode(model, opts.mode)
    ensure_refexp_head(model, mode, opts.hidden, opts.cells)
    name = head_name(mode)
    recipe.model.heads[name] = dict(model.cfg.heads.get(name, {}))  # the run's saved recipe rebuilds the head
    loader = build_loader(
        recipe.data, "train", tokenizer, recipe.train.batch_size, num_workers=recipe.train.num_workers,
        rank=rank, world_size=world_size, pin_memory=torch.cuda.is_available(),
    )  # fmt: skip
    task["mode"] = mode
    if mode == "proposals":
        module: nn.Module = ProposalScorer(model, opts.cells)
    elif mode == "regions":
        module = RegionScorer(model)
    else:
        module = BoxRegressor(model, opts.l1_weight, opts.giou_weight)
    return module, loader


# ----------------------------------------------------------------------------- evaluate


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


def view_box_to_pixels(box: Any, width: float, height: float, eval_crop: str = "resize") -> list[float]:
    """A normalized xyxy box in the model's view of the image -> pixels of the original image.

    ``resize`` views the whole image squashed to a square; ``center`` views the centred square of
    side ``min(width, height)`` (the transforms of :mod:`vlp.data.transforms`).
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if eval_crop == "center":
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        return [left + x1 * side, top + y1 * side, left + x2 * side, top + y2 * side]
    return [x1 * width, y1 * height, x2 * width, y2 * height]


def evaluate(
    model: Any,
    tokenizer: Any,
    data: Any,
    *,
    split: str = "test",
    mode: str = "auto",
    batch_size: int = 64,
    device: Any = None,
    num_workers: int = 0,
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Accuracy at IoU >= 0.5 and mean IoU (percent) of ``model`` on referring expressions.

    ``data``: a DataConfig (refcoco format) or a dataset of samples with ``target_box`` (and regions
    for region models). Returns ``accuracy``, ``miou``, ``n_expressions``, ``n_skipped``, ``mode``, ``chance``
    (``accuracy``, ``miou``) and, with ``keep_predictions``, ``predictions``:
    ``[{"ref_id", "sent_id", "image_id", "box" (pixels when the image size is known), "iou"}]``.
    """
    from vlp.data.config import DataConfig
    from vlp.metrics import elementwise_box_iou
    from vlp.tasks.common import build_eval_dataset, iterate_batches, model_data_config

    mode = trained_mode(model, mode)
    device = device if device is not None else next(model.parameters()).device
    dataset = build_eval_dataset(data, split, tokenizer) if isinstance(data, DataConfig) else data
    config = data if isinstance(data, DataConfig) else model_data_config(model)
    records = getattr(getattr(dataset, "index", None), "records", None)
    chance_acc, chance_iou, targets, metas, boxes, skipped = [], [], [], [], [], []
    was_training = model.training
    model.eval()
    try:
        for batch in iterate_batches(dataset, tokenizer, batch_size, config.max_text_len, None, num_workers, skipped):
            if batch.target_boxes is None:
                raise ConfigError("refexp: the evaluation samples have no target box (data must be refcoco format)")
            batch = batch.to(device)
            with torch.no_grad():
                pred = predict_normalized(model, batch, mode)
            target = batch.target_boxes.float()
            if mode in ("regions", "proposals"):  # a uniformly random candidate: expected hit rate and IoU
                keep = batch.region_mask
                every = elementwise_box_iou(batch.region_boxes.float(), target[:, None]) * keep
                count = keep.sum(1).clamp_min(1)
                chance_acc.append(((every >= 0.5) & keep).sum(1).cpu() / count.cpu())
                chance_iou.append(every.sum(1).cpu() / count.cpu())
            targets.append(target.cpu())
            boxes.append(pred.cpu())
            metas.extend(batch.meta)
    finally:
        model.train(was_training)
    if not metas:
        raise ConfigError("refexp: the evaluation data yielded no expressions")
    iou = pixel_ious(torch.cat(boxes), torch.cat(targets), metas, records, config.transform.eval_crop)
    if mode in ("regions", "proposals"):
        chance = {
            "accuracy": 100 * torch.cat(chance_acc).double().mean().item(),
            "miou": 100 * torch.cat(chance_iou).double().mean().item(),
        }
    else:
        chance = centre_box_chance(torch.cat(targets))
    metrics: dict[str, Any] = {
        "accuracy": 100 * (iou >= 0.5).double().mean().item(),
        "miou": 100 * iou.double().mean().item(),
        "n_expressions": len(metas),
        "n_skipped": len(skipped),  # unreadable samples (bad image or region file), left out
        "mode": mode,
        "chance": chance,
    }
    if keep_predictions:
        metrics["predictions"] = _predictions(torch.cat(boxes), iou, metas, records, config.transform.eval_crop)
    return metrics


def pixel_ious(pred: torch.Tensor, target: torch.Tensor, metas: list[dict[str, Any]], records: Any,
               eval_crop: str = "resize") -> torch.Tensor:  # fmt: skip
    """``(N,)`` float64 IoU of predicted and target boxes (``(N, 4)`` normalized xyxy in the model's view).

    Where a sample's record (``records[meta["index"]]``) gives the image size and the pixel
    ``target_box``, both boxes are compared in float64 pixels of the original image, as RefCOCO's
    evaluation does; a prediction within 1e-3 pixel of one of the record's candidate ``boxes`` (the
    proposals it was picked from, normalized through float32) is that candidate exactly. Otherwise
    the view boxes are compared in float64.
    """
    from vlp.metrics import elementwise_box_iou

    pred_px, target_px = pred.double().tolist(), target.double().tolist()
    for k, meta in enumerate(metas):
        record = records[meta["index"]] if records is not None and "index" in meta else {}
        width, height, box = record.get("width"), record.get("height"), record.get("target_box")
        if not (width and height and box is not None):
            continue
        guess = view_box_to_pixels(pred_px[k], width, height, eval_crop)
        exact = [c for c in record.get("boxes") or [] if max(abs(a - b) for a, b in zip(c, guess)) < 1e-3]
        pred_px[k] = [float(v) for v in (exact[0] if exact else guess)]
        target_px[k] = [float(v) for v in box]
    return elementwise_box_iou(torch.tensor(pred_px, dtype=torch.float64), torch.tensor(target_px, dtype=torch.float64))


def centre_box_chance(targets: torch.Tensor) -> dict[str, float]:
    """Accuracy at IoU >= 0.5 and mean IoU (percent) of always answering the box of the mean target
    size at the image centre; ``targets`` ``(N, 4)`` normalized xyxy."""
    from vlp.metrics import elementwise_box_iou

    w, h = (targets[:, 2:] - targets[:, :2]).double().mean(0).tolist()
    centre = targets.new_tensor([0.5 - w / 2, 0.5 - h / 2, 0.5 + w / 2, 0.5 + h / 2])
    iou = elementwise_box_iou(centre.expand_as(targets), targets).double()
    return {"accuracy": 100 * (iou >= 0.5).double().mean().item(), "miou": 100 * iou.mean().item()}


def _predictions(boxes: torch.Tensor, iou: torch.Tensor, metas: list[dict[str, Any]], records: Any,
                 eval_crop: str) -> list[dict[str, Any]]:  # fmt: skip
    out = []
    for box, value, meta in zip(boxes.tolist(), iou.tolist(), metas):
        record = records[meta["index"]] if records is not None and "index" in meta else {}
        width, height = record.get("width"), record.get("height")
        if width and height:
            box = view_box_to_pixels(box, width, height, eval_crop)
        out.append({"ref_id": meta.get("ref_id"), "sent_id": meta.get("sent_id"), "image_id": meta.get("image_id"),
                    "expression": meta.get("text"), "box": [round(v, 2) for v in box], "iou": value})  # fmt: skip
    return out


# ----------------------------------------------------------------------------- vlp eval refexp


def eval_data_for(model: Any, data: Any) -> Any:
    """Region models read ShapesWorld's region files (and no pixels) unless the data says otherwise."""
    if is_region_model(model) and data.type == "shapesworld":
        data.options.setdefault("regions", True)
        data.options.setdefault("load_images", False)
    return data


__all__ = [
    "BoxRegressor",
    "ProposalScorer",
    "RefExpTask",
    "RegionScorer",
    "box_regression_loss",
    "build_finetuning",
    "centre_box_chance",
    "ensure_refexp_head",
    "evaluate",
    "locate",
    "pixel_ious",
    "predict",
    "predict_normalized",
    "region_scores",
    "region_targets",
    "resolve_mode",
    "view_box_to_pixels",
]
