"""The zero-shot classifier: prompt templates, and each class's template-ensembled text embedding as
the weights that image embeddings are scored against (``exp(logit_scale) * image @ class.T``).

Probe and perception build on these too (perception's text queries are ensembled the same way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from vlp.config import ConfigError
from vlp.objectives.itc import MAX_LOGIT_SCALE
from vlp.tasks.common import has_dual

# Named template sets. "clip7" is the 7-template subset CLIP's authors found best for ImageNet.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "photo": ("a photo of a {}.",),
    "clip7": ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
              "a {} in a video game.", "art of the {}.", "a photo of the small {}."),
    "shapes": ("a {} shape.", "a picture of a {}.", "a photo of a {}.", "there is a {}.", "a {}."),
    # CLIP's 80 ImageNet prompt templates (the prompt-engineering notebook of openai/CLIP; clip_benchmark's
    # default for ImageNet), in the notebook's order
    "imagenet80": (
        "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
        "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
        "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
        "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
        "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
        "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
        "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
        "a cropped photo of a {}.",
        "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.",
        "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.",
        "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.", "the origami {}.",
        "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
        "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.",
        "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.", "a photo of a weird {}.",
        "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
        "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.", "a good photo of a {}.",
        "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.", "a photo of the weird {}.",
        "the cartoon {}.", "art of the {}.", "a drawing of the {}.", "a photo of the large {}.",
        "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.", "itap of a {}.",
        "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.", "a photo of a small {}.",
        "a tattoo of the {}.",
    ),
}  # fmt: skip


def resolve_templates(templates: str | Sequence[str]) -> list[str]:
    """A template-set name (``photo``, ``clip7``, ``imagenet80``, ``shapes``), ``;``-separated templates, or a list.

    Every template must hold ``{}`` exactly once (where the class name goes).
    """
    if isinstance(templates, str):
        templates = TEMPLATE_SETS.get(templates) or [t.strip() for t in templates.split(";") if t.strip()]
    out = list(templates)
    if not out:
        raise ConfigError(
            "templates: got none; pass a set name (photo, clip7, imagenet80, shapes) or templates with '{}'"
        )
    for t in out:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ConfigError(
                f"templates: {t!r} must contain '{{}}' exactly once (or name a set: {', '.join(TEMPLATE_SETS)})"
            )
    return out


def ensemble(text_embeds: torch.Tensor) -> torch.Tensor:
    """``(C, T, E)`` per-template text embeddings -> ``(C, E)``: normalize, mean over templates, renormalize."""
    return F.normalize(F.normalize(text_embeds, dim=-1).mean(dim=1), dim=-1)


def encode_texts(model: Any, tokenizer: Any, texts: list[str], max_len: int, batch_size: int = 256) -> torch.Tensor:
    """``(N, E)`` normalized text embeddings of ``texts`` (gradients flow when enabled)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        tok = tokenizer(texts[start : start + batch_size], max_length=max_len)
        out.append(model.encode_text(tok.input_ids.to(device), tok.attention_mask.bool().to(device),
                                     tok.token_type_ids.to(device)))  # fmt: skip
    return torch.cat(out)


def class_embeddings(
    model: Any, tokenizer: Any, class_names: Sequence[str], templates: str | Sequence[str], max_len: int = 40
) -> torch.Tensor:
    """``(C, E)`` zero-shot classifier weights: the template-ensembled text embedding of each class."""
    if not has_dual(model):
        raise ConfigError("zero-shot classification needs a dual-encoder side (model.embed_dim > 0, e.g. CLIP)")
    templates = resolve_templates(templates)
    names = list(class_names)
    if not names:
        raise ValueError("class_names: got an empty list")
    prompts = [t.format(name) for name in names for t in templates]
    embeds = encode_texts(model, tokenizer, prompts, max_len)
    return ensemble(embeds.view(len(names), len(templates), -1))


def logit_scale(model: Any) -> torch.Tensor:
    """The model's contrastive temperature ``exp(logit_scale)``, clamped as in training."""
    return model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
