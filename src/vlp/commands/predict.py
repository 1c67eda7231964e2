"""``vlp predict caption | vqa | zeroshot | ground | embed MODEL INPUTS...``: a model on a user's own images.

INPUTS are image files, folders (recursive), globs, JSONL/CSV manifests or WebDataset ``.tar`` shards
(:mod:`vlp.data.inputs`). MODEL is any model a user holds (:func:`vlp.io.folders.load_any`): a vlp model,
run or checkpoint folder, a converted transformers / OpenCLIP folder, or such a checkpoint itself; its
images are prepared with its own stored preprocessing (the recipe's data section).

Every task but ``embed`` writes one JSON line per image (``--out FILE.jsonl``, stdout without it) with
its ``path``; an image that cannot be read becomes a line with an ``error`` and is counted, never a
crash. A rerun with the same ``--out`` continues where the last one stopped (:mod:`vlp.io.predictions`).
``embed`` writes ``.npy`` shards + ``paths.txt`` + ``meta.json`` into the ``--out`` folder
(:mod:`vlp.io.embeddings`), resumable by shard.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from vlp.commands.eval_common import add_decode_arguments, decode_options
from vlp.commands.predict_tasks import (
    GROUND_METHODS,
    Predictor,
    caption_predictor,
    check_embed,
    ground_predictor,
    vqa_predictor,
    zeroshot_predictor,
)
from vlp.config import ConfigError
from vlp.data.image_io import ImageError
from vlp.data.inputs import ImageInput, list_inputs, read_input
from vlp.data.transforms import ImageTransform
from vlp.io.embeddings import EmbeddingWriter
from vlp.io.folders import LoadedModel, load_any
from vlp.io.predictions import PredictionLog
from vlp.tasks.common import model_data_config, resolve_device
from vlp.tasks.decoding import DecodeOptions
from vlp.tasks.retrieval.index_inputs import embed_items
from vlp.tasks.vqa import default_decode_options
from vlp.tasks.zeroshot.head import TEMPLATE_SETS

TASKS = ("caption", "vqa", "zeroshot", "ground", "embed")


def _model_id(model: str) -> str:
    """The model as recorded beside the output: an existing path made absolute (a rerun from another folder
    is the same model), anything else (a hub id) as given."""
    path = Path(model)
    return str(path.resolve()) if path.exists() else model


def _labels(args: argparse.Namespace) -> list[str]:
    if args.labels and args.labels_file:
        raise ConfigError("zeroshot: pass --labels or --labels-file, not both")
    if args.labels_file:
        path = Path(args.labels_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"--labels-file {path}: cannot read it ({err})") from err
        labels = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not labels:
            raise ConfigError(f"--labels-file {path}: no labels (expected one class name per line)")
        return labels
    if args.labels:
        return [label.strip() for label in args.labels.split(",") if label.strip()]
    raise ConfigError("zeroshot: pass the class names, --labels 'a dog,a cat' or --labels-file FILE")


def _templates(value: str) -> str | list[str]:
    """A set name as it is; anything else is one template, or several joined by ``|`` (``"a {}.|a photo of {}."``)."""
    if value in TEMPLATE_SETS:
        return value
    return [t.strip() for t in value.split("|") if t.strip()]


def _predictor(args: argparse.Namespace, loaded: LoadedModel) -> Predictor:
    if args.task == "caption":
        return caption_predictor(loaded, decode_options(args), args.prompt)
    if args.task == "vqa":
        return vqa_predictor(loaded, args.question, args.method, args.style, decode_options(args))
    if args.task == "zeroshot":
        return zeroshot_predictor(loaded, _labels(args), _templates(args.templates), args.top_k)
    templates = _templates(args.templates) if args.templates else None
    return ground_predictor(loaded, args.text, args.method, args.threshold, templates)


def _decode(items: Sequence[ImageInput], draft: Any, max_pixels: int) -> list[Image.Image | ImageError]:
    out: list[Image.Image | ImageError] = []
    for item in items:
        try:
            out.append(read_input(item, draft, max_pixels))
        except ImageError as err:
            out.append(err)
    return out


def _run_batch(run: Callable[[list[Any]], list[Any]], images: list[Image.Image]) -> list[Any]:
    """``run(images)``; when the batch fails on an image that decoded but cannot be used (a ValueError from
    preprocessing), the images are run one by one so that only that one becomes an error."""
    try:
        return run(images)
    except ValueError as err:
        if len(images) == 1:  # a batch of one is that image's own error, as in a larger batch
            return [ImageError("bad_image", str(err))]
    out: list[Any] = []
    for image in images:
        try:
            out.extend(run([image]))
        except ValueError as err:
            out.append(ImageError("bad_image", str(err)))
    return out


class _Tally:
    """Counts of this run: predicted, skipped by reason, and the bar on stderr."""

    def __init__(self, total: int, done: int, show: bool, unit: str) -> None:
        self.predicted = 0
        self.skipped: Counter[str] = Counter()
        self.bar = tqdm(total=total, initial=done, unit=unit, file=sys.stderr, disable=not show, dynamic_ncols=True)

    def count(self, error: ImageError | None) -> None:
        if error is None:
            self.predicted += 1
        else:
            self.skipped[error.reason] += 1

    def summary(self, task: str, resumed: int, where: str) -> str:
        self.bar.close()
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(self.skipped.items()))
        parts = [f"{self.predicted} predicted", f"{skipped} skipped" + (f" ({reasons})" if reasons else "")]
        if resumed:
            parts.append(f"{resumed} already done")
        return f"vlp predict {task}: {', '.join(parts)}; {where}"


def _error_record(key: str, err: ImageError) -> dict[str, Any]:
    return {"path": key, "error": str(err)}


def _predict_lines(args: argparse.Namespace, loaded: LoadedModel, items: list[ImageInput]) -> int:
    predictor = _predictor(args, loaded)
    config = model_data_config(loaded.model)
    draft = None if predictor.full_size else ImageTransform(config.image_size, config.transform, False).draft_size
    settings = {"task": args.task, **predictor.settings}
    log = PredictionLog(args.out, _model_id(args.model), settings, args.overwrite)
    tally = _Tally(len(items), len([i for i in items if i.key in log.done]), not args.no_progress, "img")
    try:
        # batches sit on a fixed grid over the inputs, so a resumed run puts each image in the same batch as an
        # uninterrupted one (same numbers to the last bit); only the lines not yet written are written
        for start in range(0, len(items), args.batch_size):
            chunk = items[start : start + args.batch_size]
            if all(item.key in log.done for item in chunk):
                continue
            decoded = _decode(chunk, draft, config.max_image_pixels)
            good = [im for im in decoded if not isinstance(im, ImageError)]
            results = iter(_run_batch(predictor.run, good) if good else [])
            records = []
            for item, image in zip(chunk, decoded):
                result = image if isinstance(image, ImageError) else next(results)
                if item.key in log.done:
                    continue
                error = result if isinstance(result, ImageError) else None
                records.append(_error_record(item.key, error) if error else {"path": item.key, **result})
                tally.count(error)
                tally.bar.update(1)
            log.write(records)
    finally:
        log.close()
    where = f"wrote {args.out}" if args.out else "lines on stdout"
    print(tally.summary(args.task, log.resumed, where), file=sys.stderr)
    return 0


def _embed(args: argparse.Namespace, loaded: LoadedModel, items: list[ImageInput]) -> int:
    if not args.out:
        raise ConfigError("embed: pass --out FOLDER (the .npy shards, paths.txt and meta.json go there)")
    if args.shard_size < 1:
        raise ConfigError(f"--shard-size: must be >= 1, got {args.shard_size}")
    check_embed(loaded)
    config = model_data_config(loaded.model)
    draft = ImageTransform(config.image_size, config.transform, False).draft_size
    settings = {"task": "embed"}  # the shard size may change between runs: a shard is only a unit of work
    writer = EmbeddingWriter(args.out, _model_id(args.model), settings, args.overwrite)
    pending = [item for item in items if item.key not in writer.done]
    tally = _Tally(len(items), len(items) - len(pending), not args.no_progress, "img")
    resumed = len(items) - len(pending)
    # a shard is a fixed number of inputs, written whole: a stopped run resumes at a shard boundary
    for start in range(0, len(pending), args.shard_size):
        shard = pending[start : start + args.shard_size]
        keys: list[str] = []
        vectors: list[Any] = []
        skipped: list[dict[str, str]] = []
        for offset in range(0, len(shard), args.batch_size):
            chunk = shard[offset : offset + args.batch_size]
            # the batch vlp index build embeds: unreadable or unusable images skipped with their reason
            k, v, s = embed_items(loaded.model, chunk, draft, config.max_image_pixels)
            keys += k
            vectors += v
            skipped += s
            tally.predicted += len(k)
            tally.skipped.update(record["error"].partition(":")[0] for record in s)
            tally.bar.update(len(chunk))
        matrix = np.stack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
        writer.write_shard(keys, matrix, skipped)
    print(tally.summary("embed", resumed, f"{writer.count} embeddings in {args.out}"), file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {args.batch_size}")
    items = list_inputs(args.inputs)
    device = resolve_device(args.device)
    loaded = load_any(args.model, args.tokenizer, device, require_tokenizer=args.task != "embed")
    if args.task == "embed":
        return _embed(args, loaded, items)
    return _predict_lines(args, loaded, items)


def _common(parser: argparse.ArgumentParser, out_help: str) -> None:
    parser.add_argument("model", help="model, run or checkpoint folder; a converted transformers / OpenCLIP folder; "
                        "or such a checkpoint itself")  # fmt: skip
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive), globs, "
                        ".jsonl/.csv manifests or WebDataset .tar shards")  # fmt: skip
    parser.add_argument("--out", default=None, help=out_help)
    parser.add_argument("--overwrite", action="store_true", help="replace --out instead of resuming it")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder/file (default: saved with the model)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


JSONL_OUT = "JSON lines file, one line per image (default: stdout); an existing one written by vlp predict is resumed"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="caption, question, classify, ground or embed your own images",
        description="Run a model on your own images: files, folders, globs, manifests or WebDataset shards. One JSON "
        "line per image (with its path; unreadable images become lines with an 'error', counted at the end), "
        "resumable; embed writes .npy shards + paths.txt + meta.json.",
    )  # fmt: skip
    tasks = parser.add_subparsers(dest="task", metavar="TASK")
    parser.set_defaults(run=lambda args: parser.print_help() or 2)

    sub = tasks.add_parser("caption", help="a caption per image (an image-grounded decoder, e.g. converted BLIP)")
    _common(sub, JSONL_OUT)
    add_decode_arguments(sub, DecodeOptions())
    sub.add_argument("--prompt", default=None, help="decoder prompt (default: the fine-tuning run's, else BLIP's "
                     "'a picture of ')")  # fmt: skip

    sub = tasks.add_parser("vqa", help="an answer per image to one question")
    _common(sub, JSONL_OUT)
    sub.add_argument("--question", required=True, help="the question asked of every image")
    sub.add_argument("--method", choices=("auto", "classify", "generate", "rank"), default="auto",
                     help="classify (vqa head), generate or rank (decoder)")  # fmt: skip
    sub.add_argument("--style", choices=("prefix", "blip"), default=None,
                     help="generative conditioning (default: the fine-tuning task's)")  # fmt: skip
    add_decode_arguments(sub, default_decode_options())

    sub = tasks.add_parser("zeroshot", help="classify among your own labels (a dual encoder, e.g. converted CLIP)")
    _common(sub, JSONL_OUT)
    sub.add_argument("--labels", default=None, help="comma-separated class names, e.g. 'a dog,a cat'")
    sub.add_argument("--labels-file", default=None, help="a text file, one class name per line")
    sub.add_argument("--templates", default="photo", help=f"a template set ({', '.join(TEMPLATE_SETS)}) or your "
                     "own templates with {} where the label goes, several joined by '|'")  # fmt: skip
    sub.add_argument("--top-k", type=int, default=5, help="labels listed per image, best first")

    sub = tasks.add_parser("ground", help="the box (pixels) of a referring expression in each image")
    _common(sub, JSONL_OUT)
    sub.add_argument("--text", required=True, help="the expression to find, e.g. 'the red circle'")
    sub.add_argument("--method", choices=GROUND_METHODS, default="auto", help="refexp (a fine-tuned box head) or "
                     "heatmap (a dual encoder's patch-text similarity); auto: the first the model has")  # fmt: skip
    sub.add_argument("--threshold", choices=("otsu", "std"), default="otsu", help="heatmap: Otsu or mean + std")
    sub.add_argument("--templates", default=None, help="heatmap: ensemble the text over templates (as zeroshot)")

    sub = tasks.add_parser("embed", help="L2-normalised image embeddings as .npy shards + paths.txt + meta.json")
    _common(sub, "output folder (required); an existing one written by vlp predict embed is resumed")
    sub.add_argument("--shard-size", type=int, default=10000, help="inputs per .npy shard (the unit of resuming)")
    for name, task_parser in tasks.choices.items():
        task_parser.set_defaults(run=run, task=name)


__all__ = ["TASKS", "register", "run"]
