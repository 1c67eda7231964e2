"""Linear probe and few-shot classification on frozen image features.

Linear probe (CLIP's protocol): multinomial logistic regression on frozen image features of the
train split, the L2 strength ``C`` chosen by accuracy on the val split (a log-spaced sweep), then
refit on train + val and scored on the test split. The objective is scikit-learn's
``LogisticRegression(C)`` (``C * sum_i CE_i + ||W||^2 / 2``, bias not penalized); it is solved
here with full-batch L-BFGS in float64 (``backend: torch``, no dependency) or by scikit-learn
itself (``backend: sklearn``, the ``eval`` extra). The classifiers are :mod:`vlp.tasks.probe.head`.

Few-shot: ``k`` training images per class drawn at random from the train split, scored on the
test split, averaged over ``seeds`` draws (mean and standard deviation): a nearest-class-mean
classifier on L2-normalized features (``prototype``) and the logistic-regression probe with a
fixed ``C`` (``probe``). A class with fewer than ``k`` images uses all it has.

Labels and features come from :mod:`vlp.tasks.zeroshot.labels` (COCO instances; ShapesWorld: shape,
colour or colour-shape of the main object; or an image folder with one sub-folder per class). Without
a val split of its own (an image folder's train/ + val/ layout, or one folder split by seed), ``C``
is chosen on a seeded part of the train split (:func:`carve_validation`). ``vlp eval probe`` runs
both protocols. The probe is evaluation-only: it fits on frozen features and has no fine-tuning
step or predict API.
"""

from vlp.tasks.probe.evaluate import DEFAULT_CS, carve_validation, evaluate, few_shot, linear_probe, sample_shots
from vlp.tasks.probe.head import LinearClassifier, fit_logistic, prototype_classifier

__all__ = [
    "DEFAULT_CS",
    "LinearClassifier",
    "carve_validation",
    "evaluate",
    "few_shot",
    "fit_logistic",
    "linear_probe",
    "prototype_classifier",
    "sample_shots",
]
