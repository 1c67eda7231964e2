"""What ``vlp predict TASK`` runs on a batch of images: one adapter per task over the task's predict API
(:mod:`vlp.tasks`), turning its answers into the fields of a JSON line. No argparse here
(:mod:`vlp.commands.predict` owns the options); each adapter checks at construction that the model can
do the task, so that a wrong model is one clear error, not one error line per image."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from vlp.config import ConfigError
from vlp.io.folders import LoadedModel
from vlp.tasks import captioning, perception, refexp, vqa, zeroshot
from vlp.tasks.common import has_dual, model_data_config
from vlp.tasks.decoding import DecodeOptions
from vlp.tasks.perception.head import check_dense
from vlp.tasks.vqa.decode import check_generative
from vlp.tasks.vqa.head import resolve_method
from vlp.tasks.zeroshot.head import class_embeddings, resolve_templates

GROUND_METHODS = ("auto", "refexp", "heatmap")


@dataclass
class Predictor:
    """``run(images) -> one dict of output fields per image``; ``settings``: what the output depends on
    (recorded beside the output, so a resumed run never mixes two settings); ``full_size``: the images
    must be decoded at full resolution (boxes in pixels), not JPEG-draft reduced."""

    run: Callable[[list[Image.Image]], list[dict[str, Any]]]
    settings: dict[str, Any] = field(default_factory=dict)
    full_size: bool = False


def _need_tokenizer(loaded: LoadedModel, task: str) -> Any:
    if loaded.tokenizer is None:
        raise ConfigError(f"{task}: the model folder has no tokenizer files; pass --tokenizer")
    return loaded.tokenizer


def caption_predictor(loaded: LoadedModel, options: DecodeOptions, prompt: str | None = None) -> Predictor:
    """Captions by :func:`vlp.tasks.captioning.caption`; ``prompt`` None = the fine-tuning run's, else BLIP's."""
    model, tokenizer = loaded.model, _need_tokenizer(loaded, "caption")
    if getattr(model, "decoder", None) is None:
        raise ConfigError(
            f"caption: model {model.cfg.name!r} has no text decoder; captioning needs an image-grounded "
            "decoder (a converted BlipForConditionalGeneration, or a captioning fine-tuning run)"
        )
    prompt = prompt if prompt is not None else loaded.task.get("prompt", "a picture of ")
    decode = {k: v for k, v in dataclasses.asdict(options).items() if k != "strategy"}

    def run(images: list[Image.Image]) -> list[dict[str, Any]]:
        texts = captioning.caption(model, tokenizer, images, options.strategy, prompt=prompt, **decode)
        return [{"caption": text} for text in texts]

    return Predictor(run, {"prompt": prompt, **dataclasses.asdict(options)})


def vqa_predictor(
    loaded: LoadedModel, question: str, method: str = "auto", style: str | None = None, options: Any = None
) -> Predictor:
    """One answer per image to the same ``question`` (:func:`vlp.tasks.vqa.predict`)."""
    model, tokenizer = loaded.model, _need_tokenizer(loaded, "vqa")
    if not question.strip():
        raise ConfigError("vqa: --question is empty")
    method = resolve_method(model, method)
    vocab = loaded.task.get("answer_vocab") or None
    style = style or loaded.task.get("style", "prefix")
    if method == "classify" and not vocab:
        raise ConfigError(
            "vqa: the model's vqa head needs its answer vocabulary (task.answer_vocab of the fine-tuning "
            "run), which this folder lacks; use --method generate with a decoder"
        )
    if method != "classify":
        check_generative(model, style)

    def run(images: list[Image.Image]) -> list[dict[str, Any]]:
        answers = vqa.predict(model, tokenizer, images, [question] * len(images), answer_vocab=vocab, method=method,
                              style=style, options=options)  # fmt: skip
        return [{"question": question, "answer": answer} for answer in answers]

    settings = {"question": question, "method": method, "style": style}
    if method != "classify" and options is not None:
        settings.update(dataclasses.asdict(options))
    return Predictor(run, settings)


def zeroshot_predictor(
    loaded: LoadedModel, labels: Sequence[str], templates: str | Sequence[str] = "photo", top_k: int = 5
) -> Predictor:
    """The user's labels scored by :func:`vlp.tasks.zeroshot.classify`; the class prompts are encoded once."""
    model, tokenizer = loaded.model, _need_tokenizer(loaded, "zeroshot")
    names = [str(n) for n in labels]
    if not names:
        raise ConfigError("zeroshot: no labels; pass --labels 'a dog,a cat' or --labels-file FILE")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"zeroshot: labels given twice: {', '.join(duplicated)}")
    if top_k < 1:
        raise ConfigError(f"--top-k: must be >= 1, got {top_k}")
    if not has_dual(model):
        raise ConfigError(f"zeroshot: model {model.cfg.name!r} has no dual-encoder side (e.g. CLIP)")
    resolved = resolve_templates(templates)
    with torch.no_grad():
        weights = class_embeddings(model, tokenizer, names, resolved, model_data_config(model).max_text_len)
    k = min(top_k, len(names))

    def run(images: list[Image.Image]) -> list[dict[str, Any]]:
        _, probs = zeroshot.classify(model, tokenizer, images, names, resolved, weights=weights)
        top = probs.topk(k, dim=1)
        out = []
        for values, indices in zip(top.values.tolist(), top.indices.tolist()):
            ranked = [{"label": names[i], "score": round(v, 6)} for v, i in zip(values, indices)]
            out.append({"label": ranked[0]["label"], "score": ranked[0]["score"], "top": ranked})
        return out

    return Predictor(run, {"labels": names, "templates": resolved, "top_k": k})


def ground_method(model: Any, method: str = "auto") -> str:
    """``refexp`` (a fine-tuned box-regression head) or ``heatmap`` (a dual encoder's patch-text similarity);
    ``auto`` takes the first the model can do."""
    if method not in GROUND_METHODS:
        raise ConfigError(f"--method: {method!r} is not one of {', '.join(GROUND_METHODS)}")
    if method in ("auto", "refexp") and "box" in model.heads:
        return "refexp"
    if method == "refexp":
        extra = " (its proposal_score head picks among candidate boxes, which a folder of images lacks)" if (
            "proposal_score" in model.heads) else ""  # fmt: skip
        raise ConfigError(f"ground --method refexp: the model has no box-regression head{extra}; "
                          "fine-tune refexp with mode box, or use --method heatmap with a dual encoder")  # fmt: skip
    try:
        check_dense(model)
    except ConfigError as err:
        raise ConfigError(f"ground: the model has no box head (refexp, mode box) and no heat map: {err}") from err
    return "heatmap"


def ground_predictor(
    loaded: LoadedModel, text: str, method: str = "auto", threshold: str = "otsu", templates: Any = None
) -> Predictor:
    """The box ``text`` refers to, in pixels of each image: :func:`vlp.tasks.refexp.predict` with a box head,
    else the box of the thresholded heat map (:func:`vlp.tasks.perception.locate_text`)."""
    model, tokenizer = loaded.model, _need_tokenizer(loaded, "ground")
    if not text.strip():
        raise ConfigError("ground: --text is empty")
    method = ground_method(model, method)

    def run(images: list[Image.Image]) -> list[dict[str, Any]]:
        if method == "refexp":
            boxes = refexp.predict(model, tokenizer, images, [text] * len(images), mode="box")
        else:
            boxes = [perception.locate_text(model, tokenizer, im, text, threshold, templates=templates)[0]
                     for im in images]  # fmt: skip
        return [{"text": text, "box": [round(float(v), 2) for v in box], "method": method} for box in boxes]

    settings = {"text": text, "method": method}
    if method == "heatmap":
        settings.update(threshold=threshold, templates=templates)
    return Predictor(run, settings, full_size=True)


def check_embed(loaded: LoadedModel) -> None:
    if not has_dual(loaded.model):
        raise ConfigError(f"embed: model {loaded.model.cfg.name!r} has no dual-encoder side (e.g. CLIP)")


__all__ = [
    "GROUND_METHODS",
    "Predictor",
    "caption_predictor",
    "check_embed",
    "ground_method",
    "ground_predictor",
    "vqa_predictor",
    "zeroshot_predictor",
]
