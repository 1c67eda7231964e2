"""Visual question answering: answer classification (ViLT/UNITER/ALBEF-style head) and generative
VQA (BLIP style, :mod:`vlp.tasks.vqa.decode`), both scored with the official VQA accuracy.

Classification: the ``vqa`` head maps the fused pooled output (the fused [CLS]) to one logit per
answer of a vocabulary of the most frequent training answers (the data loader builds it:
``data.options.top_k``, 3129 for VQAv2). Targets are VQAv2's soft scores (the expected official
accuracy of each answer: 0, 0.3, 0.6, 0.9, 1 for 0..>=4 matching annotators). The loss is
binary cross-entropy with logits, averaged over batch *and* answers and then multiplied by the
number of answers, exactly as ViLT and UNITER do: that is BCE summed over answers and averaged
over questions, which keeps the gradient of each answer logit independent of the vocabulary
size. The fine-tuning builder adds (or resizes) the ``vqa`` head to the vocabulary and records
the vocabulary in the run's ``task.answer_vocab``, so ``vlp eval vqa --model RUN`` maps logits
back to answers.

Evaluation: predictions are normalized like the official script does and scored with
:func:`vlp.metrics.vqa_score`, overall and per answer type (and per question type in
``results.json``). ``chance`` is a question-blind prior: always answering the most frequent
human answer of each answer type in the evaluated split (:func:`vlp.metrics.vqa.answer_prior`).

Files: ``head`` (the vqa head, its logits and answer vocabulary), ``decode`` (the generative
decode step: conditioning, answer decoding and ranking), ``finetune``, ``evaluate``, ``predict``.
"""

from vlp.metrics.vqa import answer_prior
from vlp.tasks.vqa.decode import (
    STYLES,
    answer_sequences,
    check_generative,
    generate_answers,
    question_context,
    rank_answers,
    token_losses,
)
from vlp.tasks.vqa.evaluate import evaluate
from vlp.tasks.vqa.finetune import VQAClassifier, VQAGenerator, VQATask, build_finetuning, weighted_answers
from vlp.tasks.vqa.head import answer_logits, dataset_vocab, default_decode_options, ensure_vqa_head, resolve_method
from vlp.tasks.vqa.predict import predict

__all__ = [
    "STYLES",
    "VQAClassifier",
    "VQAGenerator",
    "VQATask",
    "answer_logits",
    "answer_prior",
    "answer_sequences",
    "build_finetuning",
    "check_generative",
    "dataset_vocab",
    "default_decode_options",
    "ensure_vqa_head",
    "evaluate",
    "generate_answers",
    "predict",
    "question_context",
    "rank_answers",
    "resolve_method",
    "token_losses",
    "weighted_answers",
]
