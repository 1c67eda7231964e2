"""Linear probe and few-shot classification on frozen image features.

Linear probe (CLIP's protocol): multinomial logistic regression on frozen image features of the
train split, the L2 strength ``C`` chosen by accuracy on the val split (a log-spaced sweep), then
refit on train + val and scored on the test split. The objective is scikit-learn's
``LogisticRegression(C)`` (``C * sum_i CE_i + ||W||^2 / 2``, bias not penalized); it is solved
here with full-batch L-BFGS in float64 (``backend: torch``, no dependency) or by scikit-learn
itself (``backend: sklearn``, the ``eval`` extra).

Few-shot: ``k`` training images per class drawn at random from the train split, scored on the
test split, averaged over ``seeds`` draws (mean and standard deviation): a nearest-class-mean
classifier on L2-normalized features (``prototype``) and the logistic-regression probe with a
fixed ``C`` (``probe``). A class with fewer than ``k`` images uses all it has.

Labels and features come from :mod:`vlp.tasks.zeroshot` (COCO instances; ShapesWorld: shape,
colour or colour-shape of the main object). ``vlp eval probe`` runs both protocols.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vlp.config import ConfigError

DEFAULT_CS = tuple(10.0**e for e in range(-2, 5))  # 0.01 .. 10^4


@dataclass
class LinearClassifier:
    """``logits = features @ weight.T + bias``; weight ``(C, D)``, bias ``(C,)``."""

    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(self.weight.dtype) @ self.weight.T + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).argmax(dim=1)


def _check_xy(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0] or not len(labels):
        raise ValueError(
            f"features (N, D) and labels (N,) must match, got {tuple(features.shape)} / {tuple(labels.shape)}"
        )
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")


def fit_logistic(
    features: torch.Tensor,
    labels: torch.Tensor,
    C: float = 1.0,
    num_classes: int | None = None,
    max_iter: int = 500,
    backend: str = "torch",
) -> LinearClassifier:
    """Multinomial logistic regression with L2 strength ``1 / C`` (scikit-learn's objective).

    features ``(N, D)``, labels ``(N,)`` in ``[0, num_classes)``. Classes absent from ``labels`` get
    a bias of ``-inf`` so they are never predicted (scikit-learn drops them the same way).
    """
    num_classes = num_classes or int(labels.max()) + 1
    _check_xy(features, labels, num_classes)
    if not C > 0:
        raise ValueError(f"C must be > 0, got {C}")
    present = labels.unique()
    remap = torch.full((num_classes,), -1, dtype=torch.long)
    remap[present] = torch.arange(len(present))
    if len(present) == 1:  # one class: nothing to separate
        weight = torch.zeros(1, features.shape[1], dtype=torch.float64)
        bias = torch.zeros(1, dtype=torch.float64)
    elif backend == "sklearn":
        weight, bias = _fit_sklearn(features, remap[labels], C, max_iter)
    elif backend == "torch":
        weight, bias = _fit_lbfgs(features.double(), remap[labels], C, max_iter)
    else:
        raise ConfigError(f"probe backend: {backend!r} is not one of torch, sklearn")
    full_w = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
    full_b = torch.full((num_classes,), float("-inf"), dtype=torch.float64)
    full_w[present], full_b[present] = weight.double(), bias.double()
    return LinearClassifier(full_w, full_b)


def _fit_lbfgs(x: torch.Tensor, y: torch.Tensor, C: float, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    classes = int(y.max()) + 1
    weight = torch.zeros(classes, x.shape[1], dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(classes, dtype=x.dtype, requires_grad=True)
    # the objective divided by C * N: the same minimizer, gradients of a sane size for the line search
    reg = 1.0 / (2.0 * C * len(y))
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + reg * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def _fit_sklearn(x: torch.Tensor, y: torch.Tensor, C: float, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as err:
        raise ConfigError(
            "probe backend sklearn needs scikit-learn (pip install 'vlp[eval]'); or use backend torch"
        ) from err
    model = LogisticRegression(C=C, max_iter=max_iter, tol=1e-8).fit(x.double().numpy(), y.numpy())
    weight, bias = torch.from_numpy(model.coef_), torch.from_numpy(model.intercept_)
    if weight.shape[0] == 1:  # two classes: sklearn keeps one row w; softmax([-w/2, w/2]) is the same model
        weight, bias = torch.cat([-weight / 2, weight / 2]), torch.stack([-bias[0] / 2, bias[0] / 2])
    return weight, bias


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * (pred == labels).double().mean().item()


def linear_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    Cs: Sequence[float] = DEFAULT_CS,
    backend: str = "torch",
    refit: bool = True,
) -> dict[str, Any]:
    """Sweep ``Cs`` on ``val``, refit on train + val (``refit``), score ``test``.

    Each argument is ``(features (N, D), labels (N,))``. Returns ``accuracy`` (test, percent),
    ``C`` (the chosen one; ties go to the smallest, i.e. the most regularized) and ``val`` (the
    val accuracy of every ``C``).
    """
    if not Cs:
        raise ConfigError("probe: Cs is empty; give at least one C")
    sweep = {}
    for C in Cs:
        sweep[float(C)] = accuracy(fit_logistic(*train, C, num_classes, backend=backend).predict(val[0]), val[1])
    best = min(sweep, key=lambda c: (-sweep[c], c))
    if refit:
        train = (torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]]))
    final = fit_logistic(*train, best, num_classes, backend=backend)
    return {"accuracy": accuracy(final.predict(test[0]), test[1]), "C": best, "val": sweep}


def prototype_classifier(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> LinearClassifier:
    """Nearest class mean by cosine: the normalized mean of each class's normalized features."""
    _check_xy(features, labels, num_classes)
    unit = F.normalize(features.double(), dim=-1)
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64).index_add_(0, labels, unit)
    counts = torch.bincount(labels, minlength=num_classes)
    bias = torch.where(counts > 0, 0.0, float("-inf")).double()  # a class never seen is never chosen
    return _CosineClassifier(F.normalize(sums, dim=-1), bias)


class _CosineClassifier(LinearClassifier):
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features.double(), dim=-1) @ self.weight.T + self.bias


def sample_shots(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Indices of ``k`` random examples of every class in ``labels`` (all of them when fewer)."""
    if k < 1:
        raise ConfigError(f"few-shot: k must be >= 1, got {k}")
    rng = random.Random(seed)
    chosen = []
    for c in sorted(labels.unique().tolist()):
        members = (labels == c).nonzero().flatten().tolist()
        chosen.extend(rng.sample(members, min(k, len(members))))
    return torch.tensor(sorted(chosen), dtype=torch.long)


def few_shot(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    shots: Sequence[int] = (1, 5),
    seeds: int = 3,
    methods: Sequence[str] = ("prototype", "probe"),
    C: float = 1.0,
    backend: str = "torch",
) -> dict[str, dict[str, dict[str, float]]]:
    """``{str(k): {method: {"mean", "std"}}}`` test accuracy (percent) over ``seeds`` k-shot draws."""
    unknown = sorted(set(methods) - {"prototype", "probe"})
    if unknown:
        raise ConfigError(f"few-shot methods: {', '.join(unknown)} unknown; allowed: prototype, probe")
    if seeds < 1:
        raise ConfigError(f"few-shot: seeds must be >= 1, got {seeds}")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for k in shots:
        scores: dict[str, list[float]] = {m: [] for m in methods}
        for seed in range(seeds):
            pick = sample_shots(train[1], k, seed)
            x, y = train[0][pick], train[1][pick]
            for method in methods:
                clf = prototype_classifier(x, y, num_classes) if method == "prototype" else fit_logistic(
                    x, y, C, num_classes, backend=backend)  # fmt: skip
                scores[method].append(accuracy(clf.predict(test[0]), test[1]))
        out[str(k)] = {m: _mean_std(v) for m, v in scores.items()}
    return out


def _mean_std(values: list[float]) -> dict[str, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std}


# ----------------------------------------------------------------------------- evaluate


def evaluate(
    model: Any,
    tokenizer: Any,
    data: Any,
    *,
    by: str = "shape",
    objects: str = "largest",
    features: str = "embed",
    train_split: str = "train",
    val_split: str = "val",
    split: str = "test",
    Cs: Sequence[float] = DEFAULT_CS,
    shots: Sequence[int] = (1, 5),
    seeds: int = 3,
    methods: Sequence[str] = ("prototype", "probe"),
    backend: str = "torch",
    batch_size: int = 64,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Linear probe and few-shot accuracy (percent) of ``model``'s frozen image features.

    ``data``: a DataConfig of COCO instances (ShapesWorld format ``instances``). The class names
    come from the train split. Few-shot probes use the ``C`` the linear probe chose. Returns
    ``linear_probe`` (``accuracy``, ``C``, ``val``), ``few_shot`` (see :func:`few_shot`),
    ``n_train``/``n_val``/``n_test``, ``n_classes``, ``class_names`` and ``chance``
    (``uniform``, ``majority``: always the most frequent training class, scored on test).
    """
    from vlp.tasks.common import build_eval_dataset
    from vlp.tasks.zeroshot import labelled_features

    def split_features(name: str, names: Any) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        dataset = build_eval_dataset(data, name, tokenizer)
        return labelled_features(model, dataset, by, objects, names, data.root, features, batch_size, num_workers)

    train_x, train_y, names = split_features(train_split, None)
    val_x, val_y, _ = split_features(val_split, names)
    test_x, test_y, _ = split_features(split, names)
    num = len(names)
    probe = linear_probe((train_x, train_y), (val_x, val_y), (test_x, test_y), num, Cs, backend)
    shots_out = few_shot((train_x, train_y), (test_x, test_y), num, shots, seeds, methods, probe["C"], backend)
    majority = torch.bincount(train_y, minlength=num).argmax()
    return {
        "linear_probe": probe,
        "few_shot": shots_out,
        "n_train": len(train_y), "n_val": len(val_y), "n_test": len(test_y),
        "n_classes": num,
        "class_names": names,
        "features": features,
        "chance": {"uniform": 100.0 / num, "majority": accuracy(majority.expand_as(test_y), test_y)},
    }  # fmt: skip


__all__ = [
    "DEFAULT_CS",
    "LinearClassifier",
    "accuracy",
    "evaluate",
    "few_shot",
    "fit_logistic",
    "linear_probe",
    "prototype_classifier",
    "sample_shots",
]
