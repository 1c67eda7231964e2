"""Image captioning: LM fine-tuning of the image-grounded decoder, decoding, COCO caption metrics.

Fine-tuning (BLIP): the decoder reads ``[CLS] prompt caption [SEP]`` while cross-attending to
the image tokens; the LM loss (:class:`vlp.objectives.LM`, optional label smoothing; BLIP uses
0.1) counts the caption and its ``[SEP]``, not the prompt. BLIP's prompt is "a picture of ";
``prompt: ""`` trains without one.

Decoding starts from ``[CLS] prompt`` and stops at ``[SEP]``: greedy, beam search with a length
penalty, or nucleus sampling (:class:`DecodeOptions`, :mod:`vlp.tasks.decoding`); the returned
caption leaves the prompt out, as BLIP's evaluation does. Metrics: BLEU-1..4, METEOR, ROUGE-L,
CIDEr from :func:`vlp.metrics.caption_metrics`; the ``pycocoevalcap`` backend (COCO's own code,
needs Java) when available, else the built-in BLEU / ROUGE-L / CIDEr-D (no METEOR). Results
name the backend that was used.

:func:`grounded_generate` is the decode step generative VQA shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlp.config import ConfigError, from_dict
from vlp.core.outputs import ModelOutputs, VisualTokens
from vlp.data.batch import Batch
from vlp.objectives import LM, LMConfig

# ----------------------------------------------------------------------------- generation


@dataclass
class DecodeOptions:
    """How the image-grounded decoder generates text (see :mod:`vlp.tasks.decoding`).

    ``strategy``: ``greedy``, ``beam`` (``num_beams``, ``length_penalty``: scores are divided by
    ``length ** length_penalty``) or ``nucleus`` (sampling from the top-``top_p`` mass; ``seed``
    makes it reproducible). Lengths count generated tokens, end token included.
    """

    strategy: str = "beam"
    num_beams: int = 3
    max_new_tokens: int = 20
    min_new_tokens: int = 0
    length_penalty: float = 1.0
    top_p: float = 0.9
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "beam", "nucleus"):
            raise ValueError(f"strategy must be greedy, beam or nucleus, got {self.strategy!r}")


def grounded_generate(model: Any, tokenizer: Any, prompt: Any, context: Any, options: DecodeOptions) -> list[str]:
    """Decode from ``prompt`` ids ``(B, T0)`` with the decoder cross-attending to ``context``
    (:class:`~vlp.core.outputs.VisualTokens` ``(B, N, D)``: image tokens, or BLIP's fused question);
    returns the generated text of each row, prompt excluded, special tokens dropped.
    """
    from vlp.tasks.decoding import beam_search, greedy_decode, sample_decode

    if getattr(model, "decoder", None) is None:
        raise ConfigError(f"model {model.cfg.name!r} has no text decoder (model.decoder): it cannot generate text")

    # tokens that may never be generated: [PAD] [CLS] [MASK] and ids the tokenizer cannot decode
    # (a model's vocab_size may exceed a small tokenizer's)
    banned = [tokenizer.pad_id, tokenizer.cls_id, tokenizer.mask_id]

    def step(tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        # no KV cache: the whole prefix is re-run each step (answers and captions are short)
        logits = model.decode(tokens, None, VisualTokens(state[0], state[1]))[:, -1].float()
        logits[:, banned] = float("-inf")
        logits[:, tokenizer.vocab_size :] = float("-inf")
        return logits

    common = {
        "max_new_tokens": options.max_new_tokens, "eos_token_id": tokenizer.sep_id, "pad_token_id": tokenizer.pad_id,
        "min_new_tokens": options.min_new_tokens, "repetition_penalty": options.repetition_penalty,
        "state": (context.tokens, context.mask),
    }  # fmt: skip
    with torch.no_grad():
        if options.strategy == "greedy":
            out = greedy_decode(step, prompt, **common)
        elif options.strategy == "beam":
            out = beam_search(step, prompt, num_beams=options.num_beams, length_penalty=options.length_penalty,
                              **common)  # fmt: skip
        else:
            generator = None
            if options.seed is not None:
                generator = torch.Generator(device=prompt.device).manual_seed(options.seed)
            out = sample_decode(step, prompt, top_p=options.top_p, temperature=options.temperature,
                                generator=generator, **common)  # fmt: skip
    return [text.strip() for text in tokenizer.batch_decode(out.new_tokens.cpu())]


# ----------------------------------------------------------------------------- fine-tuning


@dataclass
class CaptionTask:
    """The ``task:`` section of a captioning recipe."""

    type: str = "captioning"
    prompt: str = "a picture of "  # BLIP's; "" = none
    label_smoothing: float = 0.0  # BLIP fine-tunes with 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """``[CLS]`` + the prompt's word pieces (no ``[SEP]``): where decoding starts."""
    return tokenizer([prompt], max_length=512).input_ids[0].tolist()[:-1]


class CaptionFinetune(nn.Module):
    """``forward(batch) -> (loss, logs)``: LM loss of ``prompt + caption`` given the image."""

    def __init__(self, model: nn.Module, tokenizer: Any, prompt: str = "a picture of ", label_smoothing: float = 0.0,
                 max_text_len: int = 40) -> None:  # fmt: skip
        super().__init__()
        if getattr(model, "decoder", None) is None:
            raise ConfigError(f"captioning needs a text decoder (model.decoder); model {model.cfg.name!r} has none")
        self.model = model
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.max_text_len = max_text_len
        prompt_length = len(prompt_ids(tokenizer, prompt)) - 1  # word pieces after [CLS]
        self.lm = LM(LMConfig(label_smoothing=label_smoothing, prompt_length=prompt_length))

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if self.prompt:  # the loader tokenized the bare caption: re-tokenize with the prompt in front
            tok = self.tokenizer([self.prompt + m["text"] for m in batch.meta], max_length=self.max_text_len)
            device = next(self.model.parameters()).device
            batch = batch.replace(input_ids=tok.input_ids.to(device), attention_mask=tok.attention_mask.to(device))
        outputs = ModelOutputs(model=self.model, image=self.model.image_tokens(batch))
        loss, logs = self.lm(outputs, batch)
        return loss, {"loss_lm": float(loss.detach()), **logs}


def build_finetuning(
    task: dict[str, Any], recipe: Any, model: Any, tokenizer: Any, *, rank: int = 0, world_size: int = 1
) -> tuple[Any, Any]:
    """``(CaptionFinetune, caption-pair train loader)`` for ``vlp finetune``."""
    from vlp.data import build_loader

    opts = from_dict(CaptionTask, task, "task")
    module = CaptionFinetune(model, tokenizer, opts.prompt, opts.label_smoothing, recipe.data.max_text_len)
    loader = build_loader(
        recipe.data, "train", tokenizer, recipe.train.batch_size, num_workers=recipe.train.num_workers,
        rank=rank, world_size=world_size, pin_memory=torch.cuda.is_available(),
    )  # fmt: skip
    return module, loader


# ----------------------------------------------------------------------------- evaluate / predict


def _captions_of(model: Any, tokenizer: Any, batch: Batch, prompt: str, options: DecodeOptions) -> list[str]:
    image = model.image_tokens(batch)
    start = torch.tensor([prompt_ids(tokenizer, prompt)] * len(batch), device=image.tokens.device)
    return grounded_generate(model, tokenizer, start, image, options)


def evaluate(
    model: Any,
    tokenizer: Any,
    data: Any,
    *,
    split: str = "test",
    prompt: str = "a picture of ",
    options: DecodeOptions | None = None,
    backend: str = "auto",
    meteor: bool = True,
    batch_size: int = 32,
    device: Any = None,
    num_workers: int = 0,
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Caption every image of ``data`` and score against its reference captions.

    ``data``: a :class:`~vlp.data.config.DataConfig` (``split`` read one record per image) or a
    dataset whose samples carry ``meta["captions"]``. Returns ``Bleu_1..4``, ``ROUGE_L``, ``CIDEr``
    (+ ``METEOR`` with pycocoevalcap), ``backend``, ``n_images``, ``n_skipped`` (unreadable images
    left out) and, with ``keep_predictions``,
    ``predictions``: ``[{"image_id", "caption"}]`` (COCO's results format).
    """
    from vlp.data.config import DataConfig
    from vlp.metrics import caption_metrics, resolve_backend
    from vlp.tasks.common import build_eval_dataset, iterate_batches

    options = options or DecodeOptions()
    chosen = resolve_backend(backend)  # fail before decoding when the asked backend is missing
    device = device if device is not None else next(model.parameters()).device
    dataset = build_eval_dataset(data, split, tokenizer) if isinstance(data, DataConfig) else data
    predictions: dict[Any, str] = {}
    references: dict[Any, list[str]] = {}
    records, skipped = [], []
    was_training = model.training
    model.eval()
    try:
        for batch in iterate_batches(dataset, None, batch_size, num_workers=num_workers, skipped=skipped):
            texts = _captions_of(model, tokenizer, batch.to(device), prompt, options)
            for meta, text in zip(batch.meta, texts):
                refs = meta.get("captions")
                if not refs:
                    raise ConfigError(f"captioning: image {meta.get('image', '?')} has no reference captions")
                key = meta.get("index", len(records))
                predictions[key], references[key] = text, list(refs)
                records.append({"image_id": meta.get("image_id", key), "caption": text})
    finally:
        model.train(was_training)
    if not predictions:
        raise ConfigError("captioning: the evaluation data yielded no images")
    metrics: dict[str, Any] = caption_metrics(predictions, references, backend=chosen, meteor=meteor)
    metrics.update(backend=chosen, n_images=len(predictions), n_skipped=len(skipped))
    if keep_predictions:
        metrics["predictions"] = records
    return metrics


def caption(
    model: Any,
    tokenizer: Any,
    images: list[Any],
    strategy: str = "beam",
    *,
    prompt: str = "a picture of ",
    device: Any = None,
    **decode: Any,
) -> list[str]:
    """One caption per image (PIL images or paths); ``decode`` holds :class:`DecodeOptions` fields
    (``num_beams``, ``max_new_tokens``, ``length_penalty``, ``top_p``, ``seed``, ...).

    ``prompt`` must be the one the model was fine-tuned with (a run's ``task["prompt"]``, which
    :func:`vlp.tasks.common.load_model` returns as ``LoadedModel.task``).
    """
    from vlp.tasks.common import image_batch

    options = DecodeOptions(strategy=strategy, **decode)
    device = device if device is not None else next(model.parameters()).device
    batch = image_batch(model, images).to(device)
    was_training = model.training
    model.eval()
    try:
        return _captions_of(model, tokenizer, batch, prompt, options)
    finally:
        model.train(was_training)


def predict(model: Any, tokenizer: Any, images: list[Any], texts: list[str] | None = None, **kwargs: Any) -> list[str]:
    """The task-uniform predict API (:func:`caption`); captioning takes no input texts."""
    if texts:
        raise ValueError("captioning predict takes no texts; pass prompt=... to caption() instead")
    return caption(model, tokenizer, images, **kwargs)


# ----------------------------------------------------------------------------- vlp eval captioning


__all__ = [
    "CaptionFinetune",
    "CaptionTask",
    "DecodeOptions",
    "build_finetuning",
    "caption",
    "evaluate",
    "grounded_generate",
    "predict",
    "prompt_ids",
]
