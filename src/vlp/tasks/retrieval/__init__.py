"""Image-text retrieval: fine-tuning, evaluation (R@1/5/10 both ways, RSUM) and ``retrieve``.

Scoring modes (``mode``, :mod:`vlp.tasks.retrieval.head`):

- ``dual``: dual encoders (CLIP; the dual side of ALBEF/BLIP/VLMo) score every pair by the dot
  product of precomputed, L2-normalized embeddings.
- ``two_stage`` (ALBEF/BLIP evaluation): the dual-side similarity shortlists the top ``k`` texts
  of each image and the top ``k`` images of each text; only those pairs are re-scored by the
  fusion encoder's ITM head (the logit of "match"). Pairs outside a shortlist score ``-inf``.
  ``add_itc`` adds the ITC similarity to the ITM score, as BLIP does.
- ``exhaustive``: the fusion encoder scores every pair, in batches of ``pair_batch_size``
  pairs: the only option for single-stream models without a dual side (ViLT, UNITER).
- ``auto``: ``dual`` without fusion, ``two_stage`` with fusion and a dual side, else ``exhaustive``.

The pairwise scorer uses the ``itm`` head, or ViLT's ``rank`` head when the model has no ``itm``.
Unimodal visual and text tokens are computed once per image / caption and cached, so a pair
costs only its fusion pass (OSCAR's tags make the text side image-dependent, so with
``use_tags`` the text tokens are computed per pair). The model-independent search (tiled top-k,
two-stage re-ranking, exhaustive scoring) is :mod:`vlp.tasks.retrieval.search`.

Metrics follow the Karpathy protocol (several captions per image; see
:func:`vlp.metrics.retrieval_metrics`); ``chance`` (:func:`vlp.metrics.retrieval.chance_recall`)
gives what a random ranking scores in expectation: t2i R@K = K / N_images, i2t R@K = mean over
images of the probability that at least one of its c captions lands in a random top K of N_texts
(hypergeometric).

Fine-tuning for retrieval is ITC + ITM on caption pairs (:class:`vlp.objectives.Pretraining`);
the ``task:`` section may name other ``objectives``. By default: ``itc`` for dual encoders,
``itc`` + ``itm`` (hard negatives) for fusion models with a dual side, ``itm`` (random
negatives) for fusion-only models.

Predict: :func:`retrieve` ``(model, tok, images, texts, k) -> RetrievalPrediction`` (top-k both ways).
Search a user's own images (an index of image embeddings, exact or FAISS IVF-PQ, ITM re-ranking):
:mod:`vlp.tasks.retrieval.index` (``build_index``, ``open_index``, ``search``).
"""

from vlp.tasks.retrieval.evaluate import evaluate
from vlp.tasks.retrieval.finetune import RetrievalTask, build_finetuning, default_objectives
from vlp.tasks.retrieval.head import MODES, Encoded, ScoreMatrices, encode, pair_scorer, resolve_mode, score_matrices
from vlp.tasks.retrieval.predict import RetrievalPrediction, predict, retrieve

__all__ = [
    "MODES",
    "Encoded",
    "RetrievalPrediction",
    "RetrievalTask",
    "ScoreMatrices",
    "build_finetuning",
    "default_objectives",
    "encode",
    "evaluate",
    "pair_scorer",
    "predict",
    "resolve_mode",
    "retrieve",
    "score_matrices",
]
