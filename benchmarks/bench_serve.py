"""``vlp serve`` under N concurrent clients for a fixed time: requests/s, p50 / p95 latency per endpoint,
errors, and the server's memory over the run (it should stay flat).

The server runs on 127.0.0.1 at a free port in this process (uvicorn in a thread; it stops by itself at
the end), so the memory read from /proc/self is the server's (the client threads add little and do not
grow). Each client loops over a mix: a text search (k=10), a caption of an uploaded PNG, a zero-shot
classification among 4 labels; every request has a 30 s timeout. The model is ``--model`` (any vlp
folder that embeds and captions), by default blip-tiny with random weights (the speed of a forward pass
does not depend on the weights), and the index ``--index`` (``vlp predict embed`` output), by default
``--images`` drawn PNGs embedded here.

Run: ``python benchmarks/bench_serve.py [--clients 8] [--seconds 60] [--max-concurrent 2]``.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import vlp
from vlp.io.embeddings import EmbeddingWriter
from vlp.recipe import recipe_dict
from vlp.serve.app import build_app
from vlp.serve.gallery import open_gallery
from vlp.serve.limits import Limits
from vlp.serve.predictor import Predictor
from vlp.serve.server import BackgroundServer
from vlp.tasks.common import image_batch, load_model
from vlp.text import Tokenizer

WORDS = ["a red circle", "a blue square", "a green triangle", "two yellow stars", "what color is the shape ?"]
BOUNDARY = "bench-boundary-5b1e"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def drawn(i: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(i)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 255, 3)))
    x, y = rng.integers(0, size // 2, 2)
    ImageDraw.Draw(image).ellipse(
        [x, y, x + size // 3, y + size // 3], fill=tuple(int(v) for v in rng.integers(0, 255, 3))
    )
    return image


def build_defaults(work: Path, images: int) -> tuple[Path, Path]:
    tokenizer = Tokenizer.train(WORDS * 4, vocab_size=120)
    torch.manual_seed(0)
    model = vlp.save_pretrained(vlp.create_model(recipe_dict("blip-tiny")), work / "model", tokenizer=tokenizer)
    folder = work / "images"
    folder.mkdir()
    paths = []
    for i in range(images):
        paths.append(folder / f"{i:05d}.png")
        drawn(i).save(paths[-1])
    loaded = load_model(model)
    writer = EmbeddingWriter(work / "index", str(model))
    with torch.no_grad():
        for start in range(0, len(paths), 256):
            chunk = paths[start : start + 256]
            writer.write_shard(
                [str(p) for p in chunk], loaded.model.encode_image(image_batch(loaded.model, chunk)).numpy()
            )
    return model, work / "index"


def form(fields: dict[str, str], png: bytes) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
    head += "Content-Type: image/png\r\n\r\n"
    return b"".join(parts) + head.encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()


def client(url: str, stop: threading.Event, seed: int, log: list) -> None:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    drawn(seed + 10_000).save(buffer, format="PNG")
    png = buffer.getvalue()
    kind = f"multipart/form-data; boundary={BOUNDARY}"
    while not stop.is_set():
        pick = int(rng.integers(0, 3))
        if pick == 0:
            name, req = (
                "search",
                urllib.request.Request(f"{url}/search?q={WORDS[int(rng.integers(0, 5))].replace(' ', '+')}&k=10"),
            )
        elif pick == 1:
            name, req = "caption", urllib.request.Request(f"{url}/caption", form({}, png), {"Content-Type": kind})
        else:
            body = form({"labels": "circle,square,triangle,star"}, png)
            name, req = "zeroshot", urllib.request.Request(f"{url}/zeroshot", body, {"Content-Type": kind})
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                json.loads(response.read())
                status = response.status
        except urllib.error.HTTPError as err:
            status = err.code
        except OSError:
            status = -1  # refused, reset or timed out
        log.append((name, time.perf_counter() - t0, status, time.perf_counter()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--model", help="a vlp model folder (default: random blip-tiny built here)")
    ap.add_argument("--index", help="an embeddings folder of that model (default: drawn images embedded here)")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model, index = (
            (Path(args.model), Path(args.index))
            if args.model and args.index
            else build_defaults(Path(tmp), args.images)
        )
        predictor = Predictor([("model", load_model(model))], open_gallery(index), num_beams=3)
        limits = Limits(max_concurrent=args.max_concurrent, request_timeout_s=30)
        with BackgroundServer(build_app(predictor, limits), stop_after=args.seconds + 60) as server:
            log: list = []
            stop = threading.Event()
            threads = [
                threading.Thread(target=client, args=(server.url, stop, i, log), daemon=True)
                for i in range(args.clients)
            ]
            memory = [(0.0, rss_mb())]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            while time.perf_counter() - start < args.seconds:
                time.sleep(min(5.0, args.seconds / 12))
                memory.append((time.perf_counter() - start, rss_mb()))
            stop.set()
            for thread in threads:
                thread.join(40)
            elapsed = time.perf_counter() - start
    print(f"{args.clients} clients for {elapsed:.0f} s against 127.0.0.1, max {args.max_concurrent} model calls at "
          f"once, {len(predictor.gallery)} images indexed, {args.threads} torch threads")  # fmt: skip
    ok = [r for r in log if r[2] == 200]
    print(f"requests {len(log)}, errors {len(log) - len(ok)} ({sorted({r[2] for r in log if r[2] != 200})}), "
          f"{len(ok) / elapsed:.1f} requests/s")  # fmt: skip
    for name in ("search", "caption", "zeroshot", "all"):
        times = [r[1] for r in ok if name in (r[0], "all")]
        if times:
            p50, p95 = np.percentile(times, 50) * 1e3, np.percentile(times, 95) * 1e3
            print(f"  {name:<9} {len(times):>6} ok   p50 {p50:8.1f} ms   p95 {p95:8.1f} ms")
    later = [m for t, m in memory if t >= min(10.0, args.seconds / 3)]
    print(f"RSS MB: start {memory[0][1]:.0f}, after warm-up {later[0]:.0f}, end {memory[-1][1]:.0f} "
          f"(change after warm-up {memory[-1][1] - later[0]:+.0f} MB)")  # fmt: skip
    print(f"samples: {', '.join(f'{m:.0f}' for _, m in memory)}")


if __name__ == "__main__":
    main()
