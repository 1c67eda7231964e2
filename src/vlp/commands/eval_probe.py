"""``vlp eval probe``: linear probe and few-shot classifiers on frozen image features."""

from __future__ import annotations

import argparse
from typing import Any

from vlp.commands.eval_common import (
    add_eval_arguments,
    add_label_arguments,
    finish_eval,
    prepare_labelled_eval,
)
from vlp.config import ConfigError
from vlp.data.sources.image_folder import folder_layout
from vlp.tasks.probe import DEFAULT_CS, evaluate


def run(args: argparse.Namespace) -> int:
    setup, folder = prepare_labelled_eval(args)
    task = setup.loaded.task
    by, objects = args.by or task.get("by", "shape"), args.objects or task.get("objects", "largest")
    val_split = args.val_split
    if val_split is None:
        val_split = _folder_val_split(setup.data.root or ".", args.split) if folder else "val"
    elif val_split == "none":
        val_split = None
    metrics = evaluate(
        setup.loaded.model, setup.loaded.tokenizer, setup.data, by=by, objects=objects, features=args.features,
        train_split=args.train_split, val_split=val_split, split=args.split, Cs=_numbers(args.Cs, float, "Cs"),
        shots=_numbers(args.shots, int, "shots"), seeds=args.seeds, backend=args.backend,
        batch_size=args.batch_size, num_workers=args.workers, val_fraction=args.val_fraction,
    )  # fmt: skip
    sources = metrics.pop("split_sources", None)
    if sources:
        for role in ("train", "val", "test"):
            print(f"{role}: {sources.get(role)}")
    chance = metrics.pop("chance")
    table: dict[str, Any] = {"linear_probe": metrics["linear_probe"]["accuracy"], "C": metrics["linear_probe"]["C"]}
    for k, methods in metrics["few_shot"].items():
        for method, value in methods.items():
            table[f"{k}-shot {method}"] = value["mean"]
    table.update(n_train=metrics["n_train"], n_test=metrics["n_test"], n_classes=metrics["n_classes"])
    settings = {"features": args.features, "backend": args.backend, "seeds": args.seeds,
                "train_split": args.train_split, "val_split": val_split}  # fmt: skip
    settings.update({"splits": sources} if folder else {"by": by, "objects": objects})
    return finish_eval(args, "probe", metrics, setup, {"linear_probe": chance["majority"], **chance}, settings, table)


def register(subparsers: argparse._SubParsersAction) -> None:
    """``vlp eval probe``."""
    parser = subparsers.add_parser(
        "probe", help="linear probe (logistic regression) and few-shot accuracy on frozen image features",
        description="Logistic regression on frozen image features (C swept on --val-split, refit on train + val, "
        "scored on --split) and k-shot classifiers averaged over seeds, on COCO-instances labels or an image folder "
        "with one sub-folder per class: under train/ and val/ (or test/) folders (ImageNet layout), or one folder "
        "split by a seed (data.options.test_fraction, split_seed). The output says which images each split holds.",
    )  # fmt: skip
    add_eval_arguments(parser)
    add_label_arguments(parser)
    parser.add_argument("--features", choices=("embed", "pooled"), default="embed",
                        help="dual-encoder embedding (default) or pooled visual tokens (any model)")  # fmt: skip
    parser.add_argument("--train-split", default="train", help="split the classifiers learn from (default: train)")
    parser.add_argument("--val-split", default=None, help="split that picks C (default: val; for an image folder "
                        "val/ when it also has test/, else a seeded part of train; 'none': that part)")  # fmt: skip
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of each class of train held out to pick C when there is no val split")  # fmt: skip
    parser.add_argument("--Cs", default=",".join(f"{c:g}" for c in DEFAULT_CS), help="inverse L2 strengths to sweep")
    parser.add_argument("--shots", default="1,5", help="few-shot k values (default: 1,5)")
    parser.add_argument("--seeds", type=int, default=3, help="few-shot draws per k (default: 3)")
    parser.add_argument("--backend", choices=("torch", "sklearn"), default="torch",
                        help="logistic-regression solver: torch L-BFGS (default) or scikit-learn")  # fmt: skip
    parser.set_defaults(run=run)


def _folder_val_split(root: str, test_split: str) -> str | None:
    """An image folder's own val split when it is not the one scored (train/ val/ test/), else None (carve it)."""
    splits = folder_layout(root).splits
    own = next((s for s in ("val", "valid", "validation") if s in splits), None)
    return own if own is not None and test_split in splits and test_split != own else None


def _numbers(text: str, kind: type, what: str) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ConfigError(f"--{what}: expected comma-separated numbers, got {text!r}") from err
