"""The few-shot protocol: k shots per class drawn once per k and seed from the train split, given alike to every
method (zero-shot, linear probe, CoOp unified / class-specific, CLIP-Adapter), scored on the test split."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from vlp.config import ConfigError
from vlp.metrics.classification import accuracy
from vlp.tasks.common import build_eval_dataset
from vlp.tasks.fewshot.training import FewShotOptions, fit_adapter, fit_coop
from vlp.tasks.probe import fit_logistic, sample_shots
from vlp.tasks.zeroshot import class_embeddings, encode_images, labelled_subset, logit_scale, resolve_templates

METHODS = ("zeroshot", "probe", "coop", "coop_csc", "adapter")
DEFAULT_METHODS = ("zeroshot", "probe", "coop", "adapter")
DEFAULT_SHOTS = (1, 2, 4, 8, 16)

# A method: (context, shot features, shot labels) -> (N_test, C) test scores. The context holds the model, the
# tokenizer, the class names, the test features, the zero-shot classifier, the scale, the options and the seed.
Method = Callable[[dict[str, Any], torch.Tensor, torch.Tensor], torch.Tensor]


def _zeroshot(ctx: dict[str, Any], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ctx["test_x"] @ ctx["classes"].T  # the shots are not used


def _probe(ctx: dict[str, Any], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    clf = fit_logistic(x, y, ctx["options"].probe_C, len(ctx["names"]))
    return clf.logits(ctx["test_x"])


def _coop(class_specific: bool) -> Method:
    def run(ctx: dict[str, Any], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model = ctx["model"]
        device = next(model.parameters()).device
        prompts = fit_coop(model, ctx["tokenizer"], ctx["names"], x.to(device), y.to(device), ctx["scale"],
                           ctx["options"], class_specific, ctx["seed"])  # fmt: skip
        with torch.no_grad():
            classes = prompts(model).float().cpu()
        return ctx["test_x"] @ classes.T

    return run


def _adapter(ctx: dict[str, Any], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    adapter = fit_adapter(ctx["classes"], x, y, ctx["scale"], ctx["options"], ctx["seed"])
    with torch.no_grad():
        return adapter(ctx["test_x"]) @ ctx["classes"].T


METHOD_FUNCTIONS: dict[str, Method] = {
    "zeroshot": _zeroshot, "probe": _probe, "coop": _coop(False), "coop_csc": _coop(True), "adapter": _adapter,
}  # fmt: skip


def check_methods(methods: Sequence[str]) -> list[str]:
    """``methods`` as a list; an unknown name (or none) is a ConfigError listing the allowed ones."""
    out = list(methods)
    unknown = [m for m in out if m not in METHOD_FUNCTIONS]
    if unknown or not out:
        raise ConfigError(f"few-shot methods: {', '.join(unknown) or 'none given'}; allowed: {', '.join(METHODS)}")
    return out


def run_methods(
    context: dict[str, Any], train: tuple[torch.Tensor, torch.Tensor], test_y: torch.Tensor,
    shots: Sequence[int], seed: int, methods: Sequence[str],
) -> tuple[dict[str, dict[str, float]], dict[str, list[int]]]:  # fmt: skip
    """``({method: {str(k): test accuracy}}, {str(k): the train indices drawn})``: one draw per k (``seed``),
    given to every method."""
    methods = check_methods(methods)
    if not shots or any(int(k) < 1 for k in shots):
        raise ConfigError(f"few-shot: shots must be integers >= 1, got {list(shots)}")
    scores: dict[str, dict[str, float]] = {m: {} for m in methods}
    drawn: dict[str, list[int]] = {}
    for k in shots:
        pick = sample_shots(train[1], int(k), seed)
        drawn[str(k)] = pick.tolist()
        x, y = train[0][pick], train[1][pick]
        for method in methods:
            logits = METHOD_FUNCTIONS[method]({**context, "seed": seed}, x, y)
            scores[method][str(k)] = accuracy(logits.argmax(1), test_y)
    return scores, drawn


def evaluate(
    model: Any,
    tokenizer: Any,
    data: Any,
    *,
    shots: Sequence[int] = DEFAULT_SHOTS,
    seed: int = 0,
    methods: Sequence[str] = DEFAULT_METHODS,
    templates: str | Sequence[str] = "photo",
    options: FewShotOptions | None = None,
    train_split: str = "train",
    split: str = "test",
    class_names: Sequence[str] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Few-shot test accuracy (percent) of each method at each k, on an image folder or COCO instances.

    ``data``: a DataConfig (an image folder with one sub-folder per class, or ShapesWorld's instances labelled
    by shape). Returns ``accuracy`` (``{method: {str(k): percent}}``), ``shots`` (``{str(k): the train image ids
    drawn}``), ``test_ids``, ``n_train``, ``n_test``, ``n_classes``, ``class_names``, ``templates``, ``options``,
    ``split_sources`` (image folders: which images each split holds) and ``chance`` (``uniform``).
    """
    options = options or FewShotOptions()
    templates = resolve_templates(templates)
    check_methods(methods)
    sources: dict[str, str] = {}

    def split_features(name: str, names: Any, role: str) -> tuple[torch.Tensor, torch.Tensor, list[str], list[Any]]:
        """``(features, labels, class names, the image id of each row)`` of a split."""
        dataset = build_eval_dataset(data, name, tokenizer)
        extras = getattr(getattr(dataset, "index", None), "extras", {})
        if "split_source" in extras:
            sources[role] = extras["split_source"]
        indices, labels, found = labelled_subset(dataset, "shape", "largest", names, data.root)
        x, seen = encode_images(model, dataset, indices, batch_size, "embed", num_workers)  # unreadable ones skipped
        label_of = dict(zip(indices, labels))
        records = getattr(getattr(dataset, "index", None), "records", None) or []
        ids = [_image_id(records, i) for i in seen]
        return x, torch.tensor([label_of[i] for i in seen], dtype=torch.long), found, ids

    train_x, train_y, names, train_ids = split_features(train_split, class_names, "train")
    test_x, test_y, _, test_ids = split_features(split, names, "test")
    with torch.no_grad():
        classes = class_embeddings(model, tokenizer, names, templates, data.max_text_len).float().cpu()
    scale = float(logit_scale(model).detach())
    context = {"model": model, "tokenizer": tokenizer, "names": names, "test_x": test_x, "classes": classes,
               "scale": scale, "options": options}  # fmt: skip
    scores, drawn = run_methods(context, (train_x, train_y), test_y, shots, seed, methods)
    return {
        "accuracy": scores,
        "shots": {k: [train_ids[i] for i in v] for k, v in drawn.items()},
        "test_ids": test_ids,
        "n_train": len(train_y), "n_test": len(test_y), "n_classes": len(names),
        "class_names": names,
        "templates": templates,
        "seed": seed,
        "options": dataclasses.asdict(options),
        "chance": {"uniform": 100.0 / len(names)},
        **({"split_sources": sources} if sources else {}),
    }  # fmt: skip


def _image_id(records: Sequence[dict[str, Any]], index: int) -> Any:
    record = records[index] if index < len(records) else {}
    return record.get("image_id", record.get("image", index))
