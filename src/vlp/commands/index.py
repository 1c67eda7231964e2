"""``vlp index build MODEL INPUTS... --out DIR``: image embeddings of your own images into a search index."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlp.config import ConfigError
from vlp.io.folders import load_any
from vlp.tasks.common import resolve_device
from vlp.tasks.retrieval.index import AUTO_EXACT_BELOW, IndexOptions, build_index, import_faiss


def _model_id(model: str) -> str:
    """An existing path made absolute (``vlp search`` loads it from anywhere); a hub id as given."""
    path = Path(model)
    return str(path.resolve()) if path.exists() else model


def run_build(args: argparse.Namespace) -> int:
    options = IndexOptions(index_type=args.index_type, nlist=args.nlist, m=args.m, nbits=args.nbits,
                           nprobe=args.nprobe, refine=args.refine, exact_below=args.exact_below)  # fmt: skip
    for name in ("nlist", "m", "nprobe", "refine", "exact_below"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')}: must be >= 0, got {getattr(args, name)}")
    loaded = load_any(args.model, args.tokenizer, resolve_device(args.device), require_tokenizer=False)
    index = build_index(
        loaded.model, args.inputs, args.out, model_id=_model_id(args.model), options=options,
        batch_size=args.batch_size, shard_size=args.shard_size, overwrite=args.overwrite,
        progress=not args.no_progress,
    )  # fmt: skip
    report, plan = index.report, index.report["plan"]
    skipped = report["skipped"]
    reasons = ", ".join(f"{r}={n}" for r, n in sorted(skipped.items()))
    params = ", ".join(f"{k} {plan[k]}" for k in ("nlist", "m", "nbits", "nprobe", "refine") if k in plan)
    kind = plan["type"] + (f" ({params})" if params else "")
    search = "faiss" if import_faiss() is not None else "numpy (exact; pip install 'vlp[faiss]' for FAISS)"
    print(f"vlp index build: {report['embedded']} embedded, {sum(skipped.values())} skipped"
          f"{f' ({reasons})' if reasons else ''}, {report['resumed']} already done; {len(index)} images in "
          f"{args.out}, index {kind}{'' if report['rebuilt'] else ' (up to date)'}, searched with {search}",
          file=sys.stderr)  # fmt: skip
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index", help="index your own images for search (vlp search)",
        description="Build a search index of image embeddings (a FAISS index when faiss-cpu is installed: pip "
        "install 'vlp[faiss]'; without it an exact numpy index, fine for small collections).",
    )  # fmt: skip
    jobs = parser.add_subparsers(dest="index_job", metavar="JOB")
    parser.set_defaults(run=lambda args: parser.print_help() or 2)
    build = jobs.add_parser(
        "build", help="embed images (files, folders, globs, manifests, shards) into an index folder",
        description="Embed the images with the model's image encoder into --out (.npy shards + paths.txt, "
        "resumable: a rerun embeds only what is missing), then index them: exact below --exact-below images, "
        "IVF-PQ above (FAISS), or as --index-type says. Captions of manifests and shards are stored beside.",
    )  # fmt: skip
    build.add_argument("model", help="model, run or checkpoint folder; a converted transformers / OpenCLIP folder "
                       "(a dual encoder: CLIP, ALBEF, BLIP)")  # fmt: skip
    build.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive), globs, "
                       ".jsonl/.csv manifests or WebDataset .tar shards")  # fmt: skip
    build.add_argument("--out", required=True, help="index folder; an unfinished or grown one is resumed")
    build.add_argument(
        "--index-type",
        choices=("auto", "flat", "ivfpq"),
        default="auto",
        help="flat = exact; ivfpq = FAISS IVF-PQ (needs faiss); auto: flat below --exact-below",
    )
    build.add_argument("--exact-below", type=int, default=AUTO_EXACT_BELOW, help="auto: exact index below this "
                       "many images")  # fmt: skip
    build.add_argument("--nlist", type=int, default=0, help="IVF lists (default 0: about 4 sqrt(N))")
    build.add_argument("--m", type=int, default=0, help="PQ sub-quantizers, dividing the dimension (default 0: "
                       "the largest divisor up to dim / 4)")  # fmt: skip
    build.add_argument("--nbits", type=int, default=8, help="bits per PQ code")
    build.add_argument("--nprobe", type=int, default=0, help="IVF lists searched (default 0: nlist / 8, >= 16)")
    build.add_argument("--refine", type=int, default=10, help="IVF-PQ: re-score refine x k candidates exactly "
                       "(0 = off)")  # fmt: skip
    build.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    build.add_argument("--shard-size", type=int, default=4096, help="images per .npy shard (the unit of resuming)")
    build.add_argument("--overwrite", action="store_true", help="start --out afresh instead of resuming it")
    build.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    build.add_argument("--tokenizer", default=None, help="tokenizer folder/file (not needed to build)")
    build.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    build.set_defaults(run=run_build)


__all__ = ["register"]
