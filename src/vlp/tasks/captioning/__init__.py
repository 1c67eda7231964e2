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

Files: ``decode`` (the prompt and the decode step, on :func:`vlp.tasks.decoding.grounded_generate`,
which generative VQA shares), ``finetune``, ``evaluate`` and ``predict`` (:func:`caption`).
"""

from vlp.tasks.captioning.decode import prompt_ids
from vlp.tasks.captioning.evaluate import evaluate
from vlp.tasks.captioning.finetune import CaptionFinetune, CaptionTask, build_finetuning
from vlp.tasks.captioning.predict import caption, predict
from vlp.tasks.decoding import DecodeOptions, grounded_generate

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
