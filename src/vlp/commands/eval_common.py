"""What every ``vlp eval TASK`` shares: its options (``--model``, ``--data``, ``--split``, ...), loading
the model and the data they name, and printing / writing the results (``results.json``)."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlp.config import ConfigError, to_dict
from vlp.data.config import DataConfig
from vlp.io.folders import LoadedModel, load_model
from vlp.models.quantize import count_int8_linears, int8_model
from vlp.tasks.common import eval_data_config, model_data_config, resolve_device
from vlp.tasks.decoding import DecodeOptions
from vlp.tasks.reporting import metrics_table, write_json, write_results
from vlp.tasks.zeroshot import BY


def add_eval_arguments(
    parser: argparse.ArgumentParser, default_split: str | None = "test", split_help: str | None = None
) -> None:
    """The options every ``vlp eval TASK`` shares (``split_help`` replaces ``--split``'s help text)."""
    parser.add_argument("--model", required=True, help="save_pretrained folder, run folder or checkpoint folder")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder/file (default: saved with the model)")
    parser.add_argument(
        "--data", default=None, help="dataset folder (its format is recognised from its files) or YAML with a "
        "data: section (default: the model recipe's data section)",
    )  # fmt: skip
    parser.add_argument(
        "--format", default=None, help="read --data as this loader type instead of recognising it: shapesworld, "
        "karpathy, albef, manifest, vqav2, refcoco, coco_instances, webdataset (default: recognised)",
    )  # fmt: skip
    parser.add_argument("--split", default=default_split,
                        help=split_help or f"split to evaluate (default: {default_split})")  # fmt: skip
    parser.add_argument("--out", default=None, help="folder for results.json and predictions (default: print only)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per forward pass (default: 64)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default: 0)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a data value, e.g. --set data.paths.annotations=dataset_coco.json (repeatable)",
    )  # fmt: skip


@dataclass
class EvalSetup:
    """What ``prepare_eval`` resolves from the command line."""

    loaded: LoadedModel
    data: DataConfig
    device: Any


def prepare_eval(args: argparse.Namespace, shapes_format: str) -> EvalSetup:
    """Load ``--model`` on ``--device`` and build the data config of ``--data``/``--format``."""
    device = resolve_device(args.device)
    loaded = load_model(args.model, args.tokenizer, device)
    base = model_data_config(loaded.model)
    data = eval_data_config(base, args.data, args.format, shapes_format, args.overrides)
    if args.data is None and not data.root and data.type != "webdataset":
        print(f"note: the model recipe's data section has no root; reading {data.type} files relative to {Path.cwd()}")
    return EvalSetup(loaded, data, device)


def prepare_labelled_eval(args: argparse.Namespace) -> tuple[EvalSetup, bool]:
    """:func:`prepare_eval` for the classification evaluations (zero-shot, probe): ``(setup, True)`` when the
    data is an image folder labelled by its class folders, where ``--by`` / ``--objects`` do not apply."""
    setup = prepare_eval(args, "instances")
    folder = setup.data.type == "image_folder"
    if folder and (args.by or args.objects):
        raise ConfigError(
            "--by / --objects: an image folder is labelled by its class folders; they apply to COCO instances"
        )
    return setup, folder


def finish_eval(
    args: argparse.Namespace,
    task: str,
    metrics: Mapping[str, Any],
    setup: EvalSetup,
    chance: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    table_metrics: Mapping[str, Any] | None = None,
) -> int:
    """Print the metrics table and write ``results.json``; returns the exit code 0.

    ``results.json``: ``{"task", "model", "split", "data", "settings", "metrics", "chance"}``.
    ``table_metrics``: what the table shows (default: every scalar of ``metrics``).
    """
    results = {
        "task": task,
        "model": str(args.model),
        "weights": setup.loaded.source,
        "split": args.split,
        "data": to_dict(setup.data),
        "settings": dict(settings or {}),
        "metrics": copy.deepcopy(dict(metrics)),
        "chance": copy.deepcopy(dict(chance or {})),
    }
    title = f"{task} on {setup.data.type}:{args.split} ({setup.data.root or '.'})"
    print(metrics_table(table_metrics if table_metrics is not None else metrics, chance, title))
    if args.out:
        print(f"wrote {write_results(args.out, results)}")
    else:
        print("(pass --out DIR to save results.json and the predictions)")
    return 0


def save_predictions(args: argparse.Namespace, name: str, predictions: Any) -> None:
    """``--out/name`` (JSON) when the command was given an ``--out`` folder."""
    if args.out:
        write_json(Path(args.out) / name, predictions)


def add_decode_arguments(parser: argparse.ArgumentParser, defaults: DecodeOptions) -> None:
    """``--strategy``, ``--num-beams``, ``--max-new-tokens`` ... for commands that generate text."""
    parser.add_argument("--strategy", choices=("greedy", "beam", "nucleus"), default=defaults.strategy,
                        help=f"decoding (default: {defaults.strategy})")  # fmt: skip
    parser.add_argument("--num-beams", type=int, default=defaults.num_beams, help="beam width")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="length limit")
    parser.add_argument("--min-new-tokens", type=int, default=defaults.min_new_tokens, help="minimum length")
    parser.add_argument("--length-penalty", type=float, default=defaults.length_penalty,
                        help="beam score = log-prob / length ** this")  # fmt: skip
    parser.add_argument("--top-p", type=float, default=defaults.top_p, help="nucleus mass")
    parser.add_argument("--repetition-penalty", type=float, default=defaults.repetition_penalty, help="1 = off")
    parser.add_argument("--seed", type=int, default=0, help="seed of nucleus sampling (default: 0)")


def decode_options(args: argparse.Namespace) -> DecodeOptions:
    """The :class:`DecodeOptions` of the arguments :func:`add_decode_arguments` added."""
    return DecodeOptions(
        strategy=args.strategy, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens, length_penalty=args.length_penalty, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, seed=args.seed,
    )  # fmt: skip


def class_names_option(value: str | None, data: DataConfig) -> tuple[list[str] | None, DataConfig]:
    """``--class-names``: comma-separated names, or a file (one name per line, a JSON list, or for an
    image folder a JSON mapping folder -> name). Returns ``(names, data)``: a file naming an image
    folder's classes goes into the data options (the reader maps folders to names) and names is None."""
    if not value:
        return None, data
    path = Path(value).expanduser()
    if path.is_file():
        if data.type == "image_folder":
            options = {**data.options, "class_names": str(path.resolve())}
            return None, dataclasses.replace(data, options=options)
        names = read_class_names_list(path)
        return names, data
    if path.suffix.lower() in (".txt", ".json", ".csv"):
        raise ConfigError(f"--class-names: {path}: file not found (or pass comma-separated names)")
    return [n.strip() for n in value.split(",") if n.strip()], data


def read_class_names_list(path: Path) -> list[str]:
    """Class names in order from a text file (one per line) or a JSON list."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--class-names: {path}: cannot read it as UTF-8 text ({err})") from err
    if path.suffix.lower() != ".json":
        return [line.strip() for line in text.splitlines() if line.strip()]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--class-names: {path}: not valid JSON ({err})") from err
    if isinstance(data, dict):
        raise ConfigError(f"--class-names: {path}: a mapping folder -> name names the classes of an image folder; "
                          "for this data give the names in order (one per line or a JSON list)")  # fmt: skip
    if not isinstance(data, list) or not all(isinstance(n, str) and n.strip() for n in data):
        raise ConfigError(f"--class-names: {path}: expected a JSON list of non-empty names")
    return [n.strip() for n in data]


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    """``--by`` and ``--objects``: what the zero-shot and probe commands classify."""
    parser.add_argument("--by", choices=BY, default=None, help="classify the main object's shape (default), colour "
                        "or colour-shape pair")  # fmt: skip
    parser.add_argument("--objects", choices=("largest", "single"), default=None,
                        help="label images by their biggest object (default) or keep one-object images")  # fmt: skip


def add_int8_argument(parser: argparse.ArgumentParser) -> None:
    """``--int8`` of the eval commands that encode with the dual towers (retrieval, zero-shot)."""
    parser.add_argument("--int8", action="store_true", help="quantize the linear layers to int8 (dynamic, CPU "
                        "only): faster, approximate; results.json records it")  # fmt: skip


def apply_int8(args: argparse.Namespace, setup: EvalSetup) -> dict[str, Any]:
    """Quantize the loaded model when ``--int8`` asks; the settings that record it (the count is of the model
    that is evaluated, so a flag that quantized nothing shows)."""
    if args.int8:
        setup.loaded.model = int8_model(setup.loaded.model, setup.device)
    return {"int8": args.int8, "int8_linears": count_int8_linears(setup.loaded.model)}
