"""The probe's protocols: the linear probe (a C sweep on val, refit on train + val, scored on test) and
few-shot classification averaged over seeds; :func:`evaluate` runs both on a model's frozen features."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch

from vlp.config import ConfigError
from vlp.metrics.classification import accuracy
from vlp.tasks.common import build_eval_dataset
from vlp.tasks.probe.head import fit_logistic, prototype_classifier
from vlp.tasks.zeroshot.labels import labelled_features

DEFAULT_CS = tuple(10.0**e for e in range(-2, 5))  # 0.01 .. 10^4


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


def carve_validation(labels: torch.Tensor, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fit indices, validation indices)``: a seeded ``fraction`` of each class's examples held out
    (at least one of a class with two or more, never all), for choosing ``C`` without a val split."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"probe: the validation fraction must lie in (0, 1), got {fraction}")
    held = []
    for c in sorted(labels.unique().tolist()):
        members = (labels == c).nonzero().flatten().tolist()
        take = min(max(round(len(members) * fraction), 1), len(members) - 1) if len(members) >= 2 else 0
        held.extend(random.Random(f"{seed}:{c}").sample(members, take))
    held_set = set(held)
    fit = [i for i in range(len(labels)) if i not in held_set]
    if not held:
        raise ConfigError("probe: no class has two training images, so none can be held out to choose C")
    return torch.tensor(fit, dtype=torch.long), torch.tensor(sorted(held), dtype=torch.long)


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


def evaluate(
    model: Any,
    tokenizer: Any,
    data: Any,
    *,
    by: str = "shape",
    objects: str = "largest",
    features: str = "embed",
    train_split: str = "train",
    val_split: str | None = "val",
    split: str = "test",
    val_fraction: float = 0.2,
    val_seed: int = 0,
    Cs: Sequence[float] = DEFAULT_CS,
    shots: Sequence[int] = (1, 5),
    seeds: int = 3,
    methods: Sequence[str] = ("prototype", "probe"),
    backend: str = "torch",
    batch_size: int = 64,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Linear probe and few-shot accuracy (percent) of ``model``'s frozen image features.

    ``data``: a DataConfig of COCO instances (ShapesWorld format ``instances``) or of an image
    folder (``image_folder``, labelled by class folder). The class names come from the train split.
    ``val_split`` None: ``C`` is chosen on a seeded ``val_fraction`` of each class of the train
    split (:func:`carve_validation`), the linear probe refits on all of train, and few-shot draws
    from all of train. Few-shot probes use the ``C`` the linear probe chose. Returns
    ``linear_probe`` (``accuracy``, ``C``, ``val``), ``few_shot`` (see :func:`few_shot`),
    ``n_train``/``n_val``/``n_test``, ``n_classes``, ``class_names``, ``split_sources`` (image
    folders: which images the train, val and test splits hold) and ``chance``
    (``uniform``, ``majority``: always the most frequent training class, scored on test).
    """

    sources: dict[str, str] = {}  # an image folder says which images each split holds

    def split_features(name: str, names: Any, role: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        dataset = build_eval_dataset(data, name, tokenizer)
        extras = getattr(getattr(dataset, "index", None), "extras", {})
        if "split_source" in extras:
            sources[role] = extras["split_source"]
        return labelled_features(model, dataset, by, objects, names, data.root, features, batch_size, num_workers)

    train_x, train_y, names = split_features(train_split, None, "train")
    test_x, test_y, _ = split_features(split, names, "test")
    num = len(names)
    if val_split is None:
        fit, held = carve_validation(train_y, val_fraction, val_seed)
        val_x, val_y = train_x[held], train_y[held]
        sources["val"] = f"a seeded {val_fraction:g} of each class of the train split (seed {val_seed}), to choose C"
        probe = linear_probe((train_x[fit], train_y[fit]), (val_x, val_y), (test_x, test_y), num, Cs, backend)
    else:
        val_x, val_y, _ = split_features(val_split, names, "val")
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
        **({"split_sources": sources} if sources else {}),
    }  # fmt: skip
