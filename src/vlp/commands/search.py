"""``vlp search DIR QUERY -k 10``: the best images of a ``vlp index build`` folder for a text or an image."""

from __future__ import annotations

import argparse
import json

from vlp.config import ConfigError
from vlp.io.folders import load_any
from vlp.tasks.common import resolve_device
from vlp.tasks.retrieval.index import is_image_query, open_index, search


def run(args: argparse.Namespace) -> int:
    index = open_index(args.index)
    model = args.model or index.info.get("model")
    if not model:
        raise ConfigError(f"{args.index}: index.json names no model; pass --model")
    text = not is_image_query(args.query)
    try:
        loaded = load_any(model, args.tokenizer, resolve_device(args.device), require_tokenizer=text)
    except (ConfigError, FileNotFoundError) as err:
        raise ConfigError(f"the index's model {model}: {err}; pass --model (the model it was built with)") from err
    hits = search(index, loaded.model, loaded.tokenizer, args.query, args.k, rerank=args.rerank,
                  rerank_k=args.rerank_k, nprobe=args.nprobe or None)  # fmt: skip
    for hit in hits:
        if args.json:
            record = {"rank": hit.rank + 1, "path": hit.path, "score": round(hit.score, 6), "caption": hit.caption}
            if hit.itm is not None:
                record["itm"] = round(hit.itm, 6)
            print(json.dumps(record, ensure_ascii=False))
            continue
        itm = f"  itm {hit.itm:7.3f}" if hit.itm is not None else ""
        caption = f"  | {hit.caption}" if hit.caption else ""
        print(f"{hit.rank + 1:>3}  {hit.score:.4f}{itm}  {hit.path}{caption}")
    if not hits:
        print("no results")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search", help="search an index of your images (vlp index build) by a text or an image",
        description="Print the best images of a vlp index build folder for a text ('a dog on a beach') or an image "
        "file: rank, score (cosine), path and caption. --rerank re-scores the shortlist with a fusion model's ITM "
        "head (ALBEF, BLIP).",
    )  # fmt: skip
    parser.add_argument("index", help="the index folder (vlp index build --out)")
    parser.add_argument("query", help="a text, or the path of an image file")
    parser.add_argument("-k", type=int, default=10, help="results to print")
    parser.add_argument("--model", default=None, help="model to embed the query (default: the one index.json names)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder/file (default: saved with the model)")
    parser.add_argument("--rerank", action="store_true", help="re-rank the shortlist by ITM (ALBEF, BLIP)")
    parser.add_argument("--rerank-k", type=int, default=32, help="shortlist re-ranked by ITM (at least -k)")
    parser.add_argument("--nprobe", type=int, default=0, help="IVF-PQ lists searched (default 0: the index's)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--json", action="store_true", help="one JSON line per result")
    parser.set_defaults(run=run)


__all__ = ["register"]
