"""``vlp eval generation``: how well generated images follow their prompts (and control maps).

For every (shape, colour) pair of ShapesWorld the prompt ``"a {colour} {shape}"`` is
sampled ``samples`` times. Reported, each against chance and against real
ShapesWorld renders of the same prompts:

- attribute accuracy: an :class:`~vlp.generation.classifier.AttributeClassifier`
  (trained on real renders) must find the asked shape, colour and both;
- layout IoU (models with a ControlNet): each prompt gets the layout map of a real
  scene of that pair; IoU of the generated object's box (colour segmentation,
  :mod:`vlp.generation.scoring`) with the layout's box. Chance = the same boxes
  scored against another prompt's layout;
- CLIP-score, given a vlp dual encoder: generated vs real images with their prompts,
  and generated images with mismatched prompts (another shape and another colour).

A model trained on other captions (``vlp train-generation --data FOLDER``) is scored on a split of a
caption dataset instead (:func:`evaluate_on_captions`, ``vlp eval generation --data FOLDER``): its
captions are the prompts, CLIP-score against the real images of those captions and against the captions
of other images. Attribute accuracy and layout IoU need ShapesWorld's known shapes and colours.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlp.data import build_loader
from vlp.data.config import DataConfig
from vlp.data.detect import DATA_KINDS, detect_data
from vlp.data.registry import LOADERS
from vlp.data.shapesworld import COLORS, SHAPES, render_layers
from vlp.generation.classifier import AttributeClassifier, load_or_train_classifier, render_objects
from vlp.generation.data import CaptionImages, box_pixels, control_map, to_uint8
from vlp.generation.images import save_grid
from vlp.generation.model import load_generator
from vlp.generation.scoring import box_iou, clip_scores, object_box
from vlp.io.saving import load, load_tokenizer

CHANCE = {"shape": 1 / 6, "color": 1 / 7, "both": 1 / 42}


def attribute_prompts() -> list[tuple[str, str, str]]:
    """``(prompt, shape, colour)`` for every ShapesWorld (shape, colour) pair, shape-major."""
    return [(f"a {color} {shape}", shape, color) for shape in SHAPES for color in COLORS]


def _other_prompt(items: list[Any], samples: int) -> list[Any]:
    """``items`` (prompt-major, ``samples`` per prompt) moved by 8 prompts: the next shape *and* the next colour."""
    k = (8 * samples) % len(items)
    return items[k:] + items[:k]


def _accuracy(classifier: Any, images: Any, shapes: Any, colors: Any) -> dict[str, float]:
    pred_shape, pred_color = classifier.predict(images)
    shape_ok, color_ok = pred_shape == shapes, pred_color == colors
    return {
        "shape": float(shape_ok.float().mean()),
        "color": float(color_ok.float().mean()),
        "both": float((shape_ok & color_ok).float().mean()),
    }


def evaluate_generation(
    model: Any,
    *,
    samples: int = 2,
    steps: int = 50,
    guidance: float = 3.0,
    eta: float = 0.0,
    seed: int = 0,
    classifier: Any = None,
    dual_encoder: Any = None,
    dual_tokenizer: Any = None,
    control: bool | None = None,
    batch_size: int = 84,
    grid: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``model`` (a :class:`TextToImageModel` with its tokenizer attached, or its folder).

    ``classifier``: an ``AttributeClassifier`` or a folder to load / train-and-save one in
    (None trains one in memory). ``dual_encoder``: a vlp model with ``encode_image`` /
    ``encode_text`` or its folder (``dual_tokenizer`` defaults to that folder's tokenizer).
    ``control`` (default: whether the model has a ControlNet) steers every sample by the
    layout of a real scene of its pair. ``grid`` writes the generated images (rows = pairs).
    Returns a JSON-ready dict of the metrics and settings.
    """
    if isinstance(model, (str, Path)):
        model = load_generator(model)
    if model.tokenizer is None:
        raise ValueError("model has no tokenizer attached; load it with vlp.generation.model.load_generator")
    if samples < 1:
        raise ValueError(f"samples={samples}: must be >= 1")
    if not isinstance(classifier, AttributeClassifier):
        classifier = load_or_train_classifier(classifier)
    control = model.control is not None if control is None else control
    if control and model.control is None:
        raise ValueError("control=True but the model has no ControlNet branch")
    size = model.cfg.image_size
    if classifier.cfg.image_size != size:
        raise ValueError(f"classifier was trained at {classifier.cfg.image_size}px but the model makes {size}px images")

    table = attribute_prompts()
    rows = [entry for entry in table for _ in range(samples)]
    prompts = [p for p, _, _ in rows]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 23]))
    real, shapes, colors, scenes = render_objects([(s, c) for _, s, c in rows], size, rng)
    maps = None
    if control:
        kind = model.cfg.control.kind
        maps = torch.stack(
            [torch.from_numpy(control_map(kind, sc, render_layers(sc, size))).permute(2, 0, 1) for sc in scenes]
        )

    images = _generate(model, prompts, steps, guidance, eta, seed, batch_size, maps, progress)
    if grid is not None:
        save_grid(to_uint8(images), rows=len(table), path=grid, scale=2)

    results: dict[str, Any] = {
        "attribute_accuracy": {
            "generated": _accuracy(classifier, images, shapes, colors),
            "real": _accuracy(classifier, real, shapes, colors),
            "chance": dict(CHANCE),
        },
        "settings": {
            "prompts": len(table),
            "samples_per_prompt": samples,
            "images": len(prompts),
            "steps": steps,
            "guidance": guidance,
            "eta": eta,
            "seed": seed,
            "control": bool(control),
        },
    }
    if control:
        asked = [box_pixels(sc.objects[0].box(size), size) for sc in scenes]
        gen_boxes = [object_box(im) for im in to_uint8(images)]
        real_boxes = [object_box(im) for im in to_uint8(real)]
        shifted = _other_prompt(asked, samples)  # another scene's layout
        results["layout_iou"] = {
            "generated": float(np.mean([box_iou(g, a) for g, a in zip(gen_boxes, asked)])),
            "real": float(np.mean([box_iou(r, a) for r, a in zip(real_boxes, asked)])),
            "chance": float(np.mean([box_iou(g, a) for g, a in zip(gen_boxes, shifted)])),
            "kind": model.cfg.control.kind,
        }
    if dual_encoder is not None:
        dual_encoder, dual_tokenizer = _dual(dual_encoder, dual_tokenizer)
        mismatched = _other_prompt(prompts, samples)  # wrong shape and wrong colour
        results["clip_score"] = {
            "generated": float(clip_scores(dual_encoder, dual_tokenizer, images, prompts).mean()),
            "real": float(clip_scores(dual_encoder, dual_tokenizer, real, prompts).mean()),
            "mismatched": float(clip_scores(dual_encoder, dual_tokenizer, images, mismatched).mean()),
        }
    return results


def caption_pairs(
    data: Any, image_size: int, tokenizer: Any, split: str = "val", count: int = 64
) -> tuple[list[str], Any]:
    """The first ``count`` (caption, image) pairs of ``split`` of a caption dataset: the captions and the images
    ``(N, 3, image_size, image_size)`` in [-1, 1]. ``data``: a :class:`vlp.data.DataConfig` or a folder whose
    format is recognised (Karpathy, ALBEF JSON, manifest, WebDataset)."""
    if not isinstance(data, DataConfig):
        data = DataConfig(**detect_data(data, DATA_KINDS["captions"]).data_section())
    options = dict(data.options)
    spec = LOADERS.get(data.type)
    if spec is not None and "mode" in {f.name for f in dataclasses.fields(spec.options)}:
        options.setdefault("mode", "pairs")  # one caption per sample, not the retrieval layout
    data = dataclasses.replace(data, image_size=image_size, options=options)
    loader = CaptionImages(build_loader(data, split, tokenizer, min(count, 64), train=False), data.transform)
    captions, images = [], []
    for batch in loader:
        captions += batch.captions
        images.append(batch.images)
        if len(captions) >= count:
            break
    if len(captions) < 2:
        raise ValueError(f"data ({data.type}, split {split!r}): {len(captions)} caption(s); scoring needs at least 2")
    return captions[:count], torch.cat(images)[:count]


def evaluate_on_captions(
    model: Any,
    data: Any,
    dual_encoder: Any,
    *,
    split: str = "val",
    count: int = 64,
    steps: int = 50,
    guidance: float = 3.0,
    eta: float = 0.0,
    seed: int = 0,
    dual_tokenizer: Any = None,
    batch_size: int = 64,
    grid: str | Path | None = None,
) -> dict[str, Any]:
    """CLIP-score of ``model``'s images for the captions of a caption dataset's ``split`` (one image each):
    ``generated`` (with their captions), ``real`` (the dataset's images with their captions) and ``mismatched``
    (generated images with the caption of the image half the list away)."""
    if isinstance(model, (str, Path)):
        model = load_generator(model)
    dual_encoder, dual_tokenizer = _dual(dual_encoder, dual_tokenizer)
    prompts, real = caption_pairs(data, model.cfg.image_size, model.tokenizer, split, count)
    images = _generate(model, prompts, steps, guidance, eta, seed, batch_size)
    if grid is not None:
        save_grid(to_uint8(images), rows=1, path=grid, scale=2)
    half = len(prompts) // 2
    mismatched = prompts[half:] + prompts[:half]
    return {
        "clip_score": {
            "generated": float(clip_scores(dual_encoder, dual_tokenizer, images, prompts).mean()),
            "real": float(clip_scores(dual_encoder, dual_tokenizer, real, prompts).mean()),
            "mismatched": float(clip_scores(dual_encoder, dual_tokenizer, images, mismatched).mean()),
        },
        "settings": {"images": len(prompts), "split": split, "steps": steps, "guidance": guidance, "seed": seed},
    }


def _generate(
    model: Any,
    prompts: list[str],
    steps: int,
    guidance: float,
    eta: float,
    seed: int,
    batch_size: int,
    maps: Any = None,
    progress: bool = False,
) -> Any:
    """One image per prompt (on the CPU), sampled in batches of ``batch_size``; batch ``k`` is seeded with
    ``seed * 100_003 + k``. ``maps``: one control map per prompt, or None."""
    device = model.null_context.device
    generated = []
    starts = range(0, len(prompts), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="generating", unit="batch")
    for k, start in enumerate(starts):
        chunk = prompts[start : start + batch_size]
        tokens = model.tokenizer(chunk, max_length=model.text.cfg.max_positions).to(device)
        generator = torch.Generator(device=device).manual_seed(seed * 100_003 + k)
        ctl = maps[start : start + batch_size].to(device) if maps is not None else None
        out = model.sample(tokens.input_ids, tokens.attention_mask, steps, guidance, eta, generator, ctl)
        generated.append(out.cpu())
    return torch.cat(generated)


def _dual(dual_encoder: Any, dual_tokenizer: Any) -> tuple[Any, Any]:
    """A dual encoder and its tokenizer from a folder (or as given)."""
    if isinstance(dual_encoder, (str, Path)):
        folder = dual_encoder
        dual_encoder = load(folder)
        dual_tokenizer = dual_tokenizer or load_tokenizer(folder)
    if dual_tokenizer is None:
        raise ValueError("dual_encoder given as a model: pass dual_tokenizer too")
    return dual_encoder, dual_tokenizer


def format_results(results: dict[str, Any]) -> str:
    """A small plain-text table of :func:`evaluate_generation`'s (or :func:`evaluate_on_captions`') results."""
    if "attribute_accuracy" not in results:
        cs, s = results["clip_score"], results["settings"]
        return (
            f"CLIP-score              generated {cs['generated']:.2f}  real {cs['real']:.2f}  "
            f"mismatched {cs['mismatched']:.2f}\n({s['images']} captions of split {s['split']}, {s['steps']} DDIM "
            f"steps, guidance {s['guidance']}, seed {s['seed']})"
        )
    lines = ["attribute accuracy      shape   colour  both"]
    for row in ("generated", "real", "chance"):
        acc = results["attribute_accuracy"][row]
        name = "real ShapesWorld" if row == "real" else row
        lines.append(f"  {name:<20} {acc['shape']:6.3f}  {acc['color']:6.3f}  {acc['both']:6.3f}")
    if "layout_iou" in results:
        iou = results["layout_iou"]
        lines.append(
            f"layout IoU ({iou['kind']})  generated {iou['generated']:.3f}  real {iou['real']:.3f}  "
            f"chance {iou['chance']:.3f}"
        )
    if "clip_score" in results:
        cs = results["clip_score"]
        lines.append(
            f"CLIP-score              generated {cs['generated']:.2f}  real {cs['real']:.2f}  "
            f"mismatched {cs['mismatched']:.2f}"
        )
    s = results["settings"]
    lines.append(
        f"({s['images']} images: {s['prompts']} prompts x {s['samples_per_prompt']}, {s['steps']} DDIM steps, "
        f"guidance {s['guidance']}, seed {s['seed']})"
    )
    return "\n".join(lines)


__all__ = [
    "CHANCE",
    "attribute_prompts",
    "caption_pairs",
    "evaluate_generation",
    "evaluate_on_captions",
    "format_results",
]
