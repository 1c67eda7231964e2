"""``vlp eval fewshot``: zero-shot vs linear probe vs CoOp vs CLIP-Adapter at k shots per class, one table."""

from __future__ import annotations

import argparse
import copy
from typing import Any

from vlp.commands.eval_common import add_eval_arguments, class_names_option, prepare_eval
from vlp.config import ConfigError, to_dict
from vlp.tasks.fewshot import DEFAULT_METHODS, DEFAULT_SHOTS, METHODS, FewShotOptions, check_methods, evaluate
from vlp.tasks.reporting import write_results
from vlp.tasks.zeroshot import TEMPLATE_SETS


def shots_table(accuracy: dict[str, dict[str, float]], shots: list[str], title: str = "") -> str:
    """Rows = methods, columns = k shots, test top-1 accuracy in percent."""
    header = ["method", *(f"{k}-shot" for k in shots)]
    rows = [[m, *(f"{values[k]:.2f}" for k in shots)] for m, values in accuracy.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [title] if title else []
    lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    setup = prepare_eval(args, "instances")  # COCO instances are labelled by the main object's shape
    folder = setup.data.type == "image_folder"
    names, setup.data = class_names_option(args.class_names, setup.data)
    options = FewShotOptions(
        coop_n_ctx=args.coop_ctx, coop_init=args.coop_init or None, coop_steps=args.coop_steps, coop_lr=args.coop_lr,
        adapter_alpha=args.adapter_alpha, adapter_reduction=args.adapter_reduction, adapter_steps=args.adapter_steps,
        adapter_lr=args.adapter_lr, probe_C=args.probe_C,
    )  # fmt: skip
    metrics = evaluate(
        setup.loaded.model, setup.loaded.tokenizer, setup.data, shots=_shots(args.shots), seed=args.seed,
        methods=check_methods(m.strip() for m in args.methods.split(",") if m.strip()), templates=args.templates,
        options=options, train_split=args.train_split, split=args.split, class_names=names,
        batch_size=args.batch_size, num_workers=args.workers,
    )  # fmt: skip
    for role, source in (metrics.get("split_sources") or {}).items():
        print(f"{role}: {source}")
    title = (f"few-shot top-1 accuracy (%) on {setup.data.type}:{args.split} ({setup.data.root or '.'}), "
             f"{metrics['n_classes']} classes, {metrics['n_test']} test images, seed {args.seed}; "
             f"chance {metrics['chance']['uniform']:.2f}")  # fmt: skip
    print(shots_table(metrics["accuracy"], list(next(iter(metrics["accuracy"].values()))), title))
    if args.out:
        results = {
            "task": "fewshot", "model": str(args.model), "weights": setup.loaded.source, "split": args.split,
            "data": to_dict(setup.data), "settings": {"train_split": args.train_split, "image_folder": folder},
            "metrics": copy.deepcopy(metrics), "chance": metrics["chance"],
        }  # fmt: skip
        print(f"wrote {write_results(args.out, results)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """``vlp eval fewshot``."""
    defaults = FewShotOptions()
    parser = subparsers.add_parser(
        "fewshot", help="few-shot classification on frozen towers: zero-shot, linear probe, CoOp, CLIP-Adapter",
        description="Draws k training images per class (once per k and --seed, the same shots for every method), "
        "trains each method on them with both towers frozen and prints test top-1 accuracy: rows = methods, "
        "columns = shots. Data: an image folder with one sub-folder per class (train/ and test/ or val/ folders, "
        "or one folder split by a seed: data.options.test_fraction, split_seed) or COCO instances (by shape).",
    )  # fmt: skip
    add_eval_arguments(parser)
    parser.add_argument("--shots", default=",".join(map(str, DEFAULT_SHOTS)), help="k values (default: 1,2,4,8,16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shot draw and of the learned parts' init")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated, of {', '.join(METHODS)} (default: {','.join(DEFAULT_METHODS)})",
    )
    parser.add_argument("--train-split", default="train", help="split the shots are drawn from (default: train)")
    parser.add_argument(
        "--templates",
        default="photo",
        help="zero-shot / adapter classifier templates: a set ("
        + ", ".join(TEMPLATE_SETS)
        + ") or ';'-separated templates with {} (default: photo)",
    )
    parser.add_argument("--class-names", default=None, help="comma-separated class names or a file (as for "
                        "vlp eval zeroshot; default: the folder names)")  # fmt: skip
    parser.add_argument("--coop-ctx", type=int, default=defaults.coop_n_ctx, help="CoOp context vectors M (16)")
    parser.add_argument("--coop-init", default=None, help="phrase the context starts from, e.g. 'a photo of a' "
                        "(M = its token count; default: random N(0, 0.02))")  # fmt: skip
    parser.add_argument("--coop-steps", type=int, default=defaults.coop_steps, help="CoOp full-batch SGD steps")
    parser.add_argument("--coop-lr", type=float, default=defaults.coop_lr, help="CoOp SGD learning rate")
    parser.add_argument("--adapter-alpha", type=float, default=defaults.adapter_alpha, help="residual ratio (0.2)")
    parser.add_argument("--adapter-reduction", type=int, default=defaults.adapter_reduction, help="bottleneck (4)")
    parser.add_argument("--adapter-steps", type=int, default=defaults.adapter_steps, help="adapter AdamW steps")
    parser.add_argument("--adapter-lr", type=float, default=defaults.adapter_lr, help="adapter learning rate")
    parser.add_argument("--probe-C", dest="probe_C", type=float, default=defaults.probe_C,
                        help="the probe's inverse L2 strength (default: 1)")  # fmt: skip
    parser.set_defaults(run=run)


def _shots(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ConfigError(f"--shots: expected comma-separated integers such as 1,2,4,8,16, got {text!r}") from err
    if not values or min(values) < 1:
        raise ConfigError(f"--shots: expected integers >= 1, got {text!r}")
    return values


__all__: list[Any] = ["register", "run", "shots_table"]
