"""What ``vlp serve`` computes, on top of the tasks' predict APIs: which loaded model answers which
endpoint, and the calls themselves on decoded PIL images. No HTTP here (see :mod:`vlp.serve.app`).

Each endpoint goes to the first model (in the order given) that can do it, a fine-tuned head before a
fallback (a VQA classifier before a decoder, a refexp box head before a heat map): ``embed`` / ``search`` /
``zeroshot`` need a dual-encoder side (CLIP, ALBEF, BLIP), ``caption`` a text decoder (BLIP), ``vqa``
a trained ``vqa`` head with its answer vocabulary or a decoder (generative), ``ground`` a fine-tuned
refexp box head or, for a dual encoder with a ViT, the text's heat-map box (zero-shot perception).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vlp.config import ConfigError
from vlp.io.folders import LoadedModel
from vlp.serve.gallery import Gallery
from vlp.tasks import captioning, perception, refexp, vqa
from vlp.tasks.common import has_dual, model_data_config
from vlp.tasks.perception.head import check_dense
from vlp.tasks.refexp.head import is_region_model, trained_mode
from vlp.tasks.retrieval.index_inputs import embed_batch
from vlp.tasks.zeroshot.head import encode_texts, resolve_templates
from vlp.tasks.zeroshot.predict import classify

ENDPOINTS = ("embed", "search", "zeroshot", "caption", "vqa", "ground")


@dataclass
class Served:
    """One loaded model and the name it is shown under (its folder name)."""

    name: str
    loaded: LoadedModel
    abilities: dict[str, str] = field(default_factory=dict)  # endpoint -> how (e.g. vqa: "generate")


def abilities(loaded: LoadedModel) -> dict[str, str]:
    """The endpoints ``loaded`` can answer, each with how it answers it."""
    model, out = loaded.model, {}
    if is_region_model(model):
        return out  # reads detector regions, not uploaded pixels
    if has_dual(model):
        out.update(embed="dual encoder", search="dual encoder", zeroshot="dual encoder")
    decoder = getattr(model, "decoder", None) is not None
    if decoder:
        out["caption"] = "decoder"
    if "vqa" in model.heads and loaded.task.get("answer_vocab"):
        out["vqa"] = "classify"
    elif decoder:
        out["vqa"] = "generate"
    try:
        mode = trained_mode(model, "auto")
        if mode == "box":  # proposals need candidate boxes an upload does not have
            out["ground"] = "refexp box head"
    except ConfigError:
        pass
    if "ground" not in out:
        try:
            check_dense(model)
            out["ground"] = "heat map (zero-shot perception)"
        except ConfigError:
            pass
    return out


class Predictor:
    """The models behind the server and the optional gallery, with one method per endpoint."""

    def __init__(
        self,
        models: list[tuple[str, LoadedModel]],
        gallery: Gallery | None = None,
        *,
        prompt: str | None = None,
        templates: str = "photo",
        num_beams: int = 3,
        max_new_tokens: int = 20,
    ) -> None:
        if not models:
            raise ConfigError("vlp serve: give at least one model")
        self.models = [Served(name, loaded, abilities(loaded)) for name, loaded in models]
        # a fine-tuned head (VQA classifier, refexp box head) before a fallback (generation, heat map), else
        # the first model given
        self.route: dict[str, Served | None] = {
            e: min(
                (s for s in self.models if e in s.abilities), key=lambda s: s.abilities[e] in _FALLBACKS, default=None
            )
            for e in ENDPOINTS
        }
        self.gallery = gallery
        self.templates = resolve_templates(templates)
        self.prompt = prompt
        self.num_beams, self.max_new_tokens = num_beams, max_new_tokens
        if gallery is not None:
            searcher = self.route["search"]
            if searcher is None:
                raise ConfigError("--index: searching needs a dual-encoder model (CLIP, ALBEF, BLIP); none was given")
            dim = searcher.loaded.model.text_proj.out_features
            if dim != gallery.dim:
                raise ConfigError(
                    f"--index holds {gallery.dim}-d embeddings but {searcher.name} embeds in {dim} dimensions; "
                    "serve the model the index was built with"
                )

    def describe(self) -> dict[str, Any]:
        """What /health reports: the models, who answers each endpoint, the index size."""
        return {
            "models": [{"name": s.name, "can": s.abilities} for s in self.models],
            "endpoints": {e: (s.name if s else None) for e, s in self.route.items()},
            "index": None if self.gallery is None else {"images": len(self.gallery), "dim": self.gallery.dim},
        }

    def need(self, endpoint: str) -> Served:
        served = self.route.get(endpoint)
        if served is None:
            raise LookupError(f"/{endpoint}: none of the served models can do this ({_NEEDS[endpoint]})")
        if endpoint == "search" and self.gallery is None:
            raise LookupError("/search: the server has no index; start it with --index DIR")
        return served

    # ------------------------------------------------------------------------------------ the endpoints

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        loaded = self.need("embed").loaded
        max_len = model_data_config(loaded.model).max_text_len
        return encode_texts(loaded.model, loaded.tokenizer, texts, max_len).float().cpu().numpy()

    def embed_image(self, image: Any) -> np.ndarray:
        return embed_batch(self.need("embed").loaded.model, [image])

    def search(self, text: str | None, image: Any, k: int) -> list[dict[str, Any]]:
        self.need("search")
        query = self.embed_texts([text]) if image is None else self.embed_image(image)
        scores, ids = self.gallery.search(query, k)
        return self.gallery.results(scores[0], ids[0])

    def zeroshot(self, image: Any, labels: list[str], templates: list[str] | None) -> list[dict[str, Any]]:
        loaded = self.need("zeroshot").loaded
        _, probs = classify(loaded.model, loaded.tokenizer, [image], labels, templates or self.templates)
        order = probs[0].argsort(descending=True).tolist()
        return [{"label": labels[i], "prob": round(float(probs[0, i]), 6)} for i in order]

    def caption(self, image: Any) -> str:
        loaded = self.need("caption").loaded
        prompt = self.prompt if self.prompt is not None else loaded.task.get("prompt", "a picture of ")
        options = {"num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens}
        return captioning.caption(loaded.model, loaded.tokenizer, [image], "beam", prompt=prompt, **options)[0]

    def vqa(self, image: Any, question: str) -> str:
        served = self.need("vqa")
        loaded = served.loaded
        vocab = loaded.task.get("answer_vocab")
        return vqa.predict(loaded.model, loaded.tokenizer, [image], [question], answer_vocab=vocab,
                           method=served.abilities["vqa"])[0]  # fmt: skip

    def ground(self, image: Any, text: str) -> tuple[list[float], str]:
        """The box ``[x1, y1, x2, y2]`` in pixels of the upload, and how it was found."""
        served = self.need("ground")
        loaded = served.loaded
        how = served.abilities["ground"]
        if how.startswith("refexp"):
            box = refexp.locate(loaded.model, loaded.tokenizer, image, text, mode="box")
        else:
            box = perception.locate_text(loaded.model, loaded.tokenizer, image, text)[0]
        return [round(float(v), 2) for v in box], how


_FALLBACKS = ("generate", "heat map (zero-shot perception)")
_NEEDS = {
    "embed": "a dual encoder such as CLIP, ALBEF or BLIP",
    "search": "a dual encoder such as CLIP, ALBEF or BLIP",
    "zeroshot": "a dual encoder such as CLIP, ALBEF or BLIP",
    "caption": "a model with a text decoder, e.g. a BLIP captioner",
    "vqa": "a fine-tuned VQA model or one with a text decoder (BLIP)",
    "ground": "a refexp model fine-tuned with a box head, or a dual encoder with a ViT (heat-map box)",
}


__all__ = ["ENDPOINTS", "Predictor", "Served", "abilities"]
