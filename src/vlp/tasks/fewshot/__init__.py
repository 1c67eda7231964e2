"""Few-shot adaptation of a dual encoder with both towers frozen: prompt learning (CoOp) and a light adapter.

Protocol (CoOp's, Zhou et al. 2022): for each k (1, 2, 4, 8, 16) k training images per class are drawn once with
the seed (:func:`vlp.tasks.probe.sample_shots`) and given alike to every method; each is scored by top-1 accuracy
on the test split. Methods:

- ``zeroshot``: the template-ensembled class prompts (:mod:`vlp.tasks.zeroshot`); uses no shot.
- ``probe``: logistic regression on the frozen image embeddings (:func:`vlp.tasks.probe.fit_logistic`, fixed C).
- ``coop`` / ``coop_csc``: the prompt ``[V1] .. [VM] CLASSNAME.`` with M learned context vectors, shared by all
  classes (unified) or one set per class (class-specific); optionally initialised from a phrase ("a photo of a").
  The vectors enter the text tower in place of word embeddings (``TextEmbeddings(inputs_embeds=...)``); trained
  with cross-entropy over ``exp(logit_scale) * cosine`` logits, SGD with a cosine schedule
  (:mod:`vlp.tasks.fewshot.head`, :mod:`vlp.tasks.fewshot.training`).
- ``adapter``: CLIP-Adapter (Gao et al. 2021), a bottleneck MLP on the image embedding blended in with ratio
  ``alpha``, against the frozen template classifier.

Image features are computed once per split (the image tower is frozen and there is no augmentation), so a
method's training costs only its own parts (CoOp: the text tower's forward and backward over the C prompts).
``vlp eval fewshot`` prints the table (rows = methods, columns = shots). Evaluation-only: there is no
``vlp finetune`` step. Predict: :func:`classify` with the trained prompts or adapter.
"""

from vlp.tasks.fewshot.evaluate import DEFAULT_METHODS, DEFAULT_SHOTS, METHODS, check_methods, evaluate, run_methods
from vlp.tasks.fewshot.head import ClipAdapter, CoOpPrompts, check_prompt_model, text_embeddings_from_words
from vlp.tasks.fewshot.predict import classify
from vlp.tasks.fewshot.training import FewShotOptions, fit_adapter, fit_coop, frozen, train_adapter, train_coop

__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_SHOTS",
    "METHODS",
    "ClipAdapter",
    "CoOpPrompts",
    "FewShotOptions",
    "check_methods",
    "check_prompt_model",
    "classify",
    "evaluate",
    "fit_adapter",
    "fit_coop",
    "frozen",
    "run_methods",
    "text_embeddings_from_words",
    "train_adapter",
    "train_coop",
]
