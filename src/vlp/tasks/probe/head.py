"""The probe's classifiers on frozen features: multinomial logistic regression (scikit-learn's objective,
solved by L-BFGS in float64 or by scikit-learn) and the nearest-class-mean (prototype) classifier."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlp.config import ConfigError


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
    try:  # optional dependency (the eval extra): imported only when this backend is asked for
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
