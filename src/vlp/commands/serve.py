"""``vlp serve``: an HTTP API and a web page over one or more models and an optional image index.

vlp serve ./blip-vlp --index ./photos-index            # http://127.0.0.1:8000/
vlp serve ./clip-vlp ./blip-vlp --index ./photos-index --port 9000 --max-concurrent 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SERVE_EXTRA = "pip install 'vlp[serve]'  (FastAPI + uvicorn)"


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        print(f"vlp serve: needs FastAPI and uvicorn ({err.name} is not installed): {SERVE_EXTRA}", file=sys.stderr)
        return 2
    import torch

    from vlp.serve.app import build_app
    from vlp.serve.gallery import open_gallery
    from vlp.serve.limits import Limits
    from vlp.serve.predictor import Predictor
    from vlp.serve.server import run as run_server
    from vlp.tasks.common import resolve_device

    try:
        limits = Limits(
            max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
            max_pixels=int(args.max_megapixels * 1_000_000),
            request_timeout_s=args.request_timeout,
            max_concurrent=args.max_concurrent,
            max_k=args.max_k,
        )
    except ValueError as err:
        print(f"vlp serve: {err}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    models = [(Path(path).name, _load(path, args.tokenizer, device)) for path in args.model]
    try:
        gallery = open_gallery(args.index, args.root) if args.index else None
    except (FileNotFoundError, ValueError) as err:
        print(f"vlp serve: {err}", file=sys.stderr)
        return 2
    predictor = Predictor(models, gallery, prompt=args.prompt, templates=args.templates, num_beams=args.num_beams)
    for endpoint, served in predictor.describe()["endpoints"].items():
        print(f"  /{endpoint:<9} {served or '(no model can)'}")
    if gallery is not None:
        print(f"  index      {len(gallery)} images under {', '.join(str(r) for r in gallery.roots)}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who reaches this machine can use the models and see "
              "the indexed images", file=sys.stderr)  # fmt: skip
    print(f"vlp serve: http://{args.host}:{args.port}/  (Ctrl-C stops)", flush=True)
    run_server(build_app(predictor, limits), args.host, args.port, stop_after=args.stop_after)
    return 0


def _load(path: str, tokenizer: str | None, device: object) -> object:
    """A model as ``vlp predict`` loads it; ``--tokenizer`` serves the models that carry none of their own."""
    from vlp.config import ConfigError
    from vlp.io.folders import load_any

    try:
        return load_any(path, device=device)
    except ConfigError as err:
        if tokenizer is None or "tokenizer" not in str(err):
            raise
        return load_any(path, tokenizer, device=device)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="HTTP API + web page: search, caption, VQA, grounding and zero-shot on your images"
    )
    parser.add_argument("model", nargs="+", help="model folders (vlp, converted transformers / OpenCLIP, runs); "
                        "each endpoint uses the first one that can answer it")  # fmt: skip
    parser.add_argument("--index", help="an index folder (`vlp index build`, or `vlp predict embed` output) to search")
    parser.add_argument("--root", action="append", default=[],
                        help="folder whose images may be shown (repeatable); default: the index's roots")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 exposes it to the network")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body")
    parser.add_argument("--max-megapixels", type=float, default=40.0, help="largest uploaded image (width x height)")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="seconds one request may take")
    parser.add_argument("--max-concurrent", type=int, default=2, help="model calls running at once; others wait")
    parser.add_argument("--max-k", type=int, default=1000, help="most search results one request may ask for")
    parser.add_argument("--templates", default="photo", help="zero-shot prompt templates: a set name or 'a {}.;...'")
    parser.add_argument(
        "--prompt", help="caption prompt (default: the model's fine-tuning prompt, else 'a picture of ')"
    )
    parser.add_argument("--num-beams", type=int, default=3, help="caption beam size")
    parser.add_argument("--tokenizer", help="tokenizer folder for the models that carry none (e.g. demo runs)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--stop-after", type=float, help="stop by itself after this many seconds")
    parser.set_defaults(run=run)
