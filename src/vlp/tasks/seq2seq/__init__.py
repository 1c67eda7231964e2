"""One sequence-to-sequence model for every task, in OFA's manner (Wang et al. 2022).

An encoder (the model's single-stream fusion module over ``[instruction tokens; image patches]``) and a causal
decoder that cross-attends to its output. Captioning, VQA and referring expressions are all text generation:
the instruction says which (``what does the image describe?``, the question, ``which region does the text
"..." describe?``) and a box is written as four location tokens (:mod:`vlp.text.locations`). Trained on the
three tasks at once (``task: {type: seq2seq}``, :mod:`.finetune`); decoded with a KV cache, restricted to
location tokens for boxes and optionally to an answer list for VQA (:mod:`.decode`); scored each task's
standard way (:mod:`.evaluate`); used on one's own images by :mod:`.predict`. No retrieval: the model has no
image-text score.
"""

from vlp.tasks.seq2seq.decode import cached_logits, encode, generate, generate_boxes, generate_text, init_cache
from vlp.tasks.seq2seq.evaluate import evaluate
from vlp.tasks.seq2seq.finetune import Seq2SeqModule, Seq2SeqTask, build_finetuning
from vlp.tasks.seq2seq.predict import answer, caption, ground

__all__ = [
    "Seq2SeqModule",
    "Seq2SeqTask",
    "answer",
    "build_finetuning",
    "cached_logits",
    "caption",
    "encode",
    "evaluate",
    "generate",
    "generate_boxes",
    "generate_text",
    "ground",
    "init_cache",
]
