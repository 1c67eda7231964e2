"""Search a user's own images: an index of image embeddings built from files, folders, globs, manifests or
WebDataset shards (``vlp index build``), searched by a text or an image (``vlp search``).

An index folder is an embeddings folder (:mod:`vlp.io.embeddings`: ``embeddings-NNNNN.npy`` shards of
L2-normalised float32 rows, ``paths.txt``, ``meta.json``; numpy and FAISS users read it as it is) plus:

- ``index.json``: the model, the index type and its parameters, the count, the indexed roots;
- ``index.faiss``: the IVF-PQ index (an exact index needs no file: the shards are its vectors);
- ``captions.jsonl``: one JSON string (or null) per row, when the inputs carry captions (a manifest's
  caption column, a shard's ``.txt`` / ``.json`` members).

Index types (inner product = cosine on normalised rows):

- ``flat``: exact. FAISS ``IndexFlatIP`` when faiss is installed, else an exact numpy search (one
  matrix product and a partial sort), fine up to about 10^5 images.
- ``ivfpq``: FAISS ``IndexIVFPQ`` (``nlist`` inverted lists, ``m`` sub-quantizers of ``nbits`` bits;
  ``nprobe`` lists searched), its top ``refine * k`` candidates re-scored exactly from the shards
  (memory-mapped), so the quantization error only decides the shortlist.
- ``auto``: ``flat`` below :data:`AUTO_EXACT_BELOW` images, else ``ivfpq``.

The vector search and the index file live in :mod:`vlp.tasks.retrieval.index_store`, the inputs' roots,
captions and batch embedding in :mod:`vlp.tasks.retrieval.index_inputs`; this module is the API. The
build is resumable: embeddings are written shard by shard and a rerun embeds only the inputs not
yet listed (:class:`~vlp.io.embeddings.EmbeddingWriter`); ``index.json`` is written last, so a folder
without it is an unfinished build. ``search`` ranks by the index score; with ``rerank`` a fusion
model (ALBEF, BLIP) re-scores the top ``rerank_k`` with its ITM head and the results follow the ITM
match logit (a text query only: ITM scores an image against a text).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from vlp.config import ConfigError
from vlp.data.image_io import ImageError
from vlp.data.inputs import IMAGE_SUFFIXES, ImageInput, list_inputs, read_input
from vlp.data.transforms import ImageTransform
from vlp.io.atomic import write_atomic
from vlp.io.embeddings import EmbeddingWriter, read_embedding_shards, read_meta
from vlp.tasks.common import has_dual, has_fusion, image_batch, model_data_config
from vlp.tasks.retrieval.head import encode, pair_scorer
from vlp.tasks.retrieval.index_inputs import (
    absolute_spec,
    embed_batch,
    embed_items,
    input_captions,
    input_roots,
)
from vlp.tasks.retrieval.index_store import (
    AUTO_EXACT_BELOW,
    CAPTIONS_NAME,
    FAISS_NAME,
    FORMAT,
    INDEX_NAME,
    IndexOptions,
    OpenedIndex,
    exact_search,
    import_faiss,
    index_plan,
    is_index_folder,
    open_index,
    read_index_info,
)
from vlp.tasks.zeroshot.head import encode_texts

# ----------------------------------------------------------------------------- building


def build_index(
    model: Any,
    inputs: list[str | Path],
    out: str | Path,
    *,
    model_id: str = "",
    options: IndexOptions | None = None,
    batch_size: int = 64,
    shard_size: int = 4096,
    overwrite: bool = False,
    progress: bool = True,
) -> OpenedIndex:
    """Embed the images of ``inputs`` (files, folders, globs, manifests, shards) into ``out`` and index them.

    ``model_id`` names the model in ``index.json`` (so ``vlp search`` loads it); a folder built with
    another model or settings is refused (``overwrite`` starts afresh). A rerun resumes: only inputs not
    yet embedded are embedded, and the index is rebuilt when they added rows. Returns the opened index;
    its ``report`` holds ``embedded``, ``resumed``, ``skipped`` (count by reason) and the plan.
    """
    options = options or IndexOptions()
    if batch_size < 1 or shard_size < 1:
        raise ConfigError(f"--batch-size and --shard-size must be >= 1, got {batch_size}, {shard_size}")
    if not has_dual(model):
        raise ConfigError("vlp index build: the model has no dual-encoder side to embed images (CLIP, ALBEF, BLIP)")
    index_type = options.index_type
    if index_type == "ivfpq":
        import_faiss("--index-type ivfpq")  # say so before embedding anything
    specs = [absolute_spec(s) for s in inputs]
    folders: set[str] = set()  # the specs that are folders: the index's roots need not stat every input again
    items = list_inputs(specs, folders)
    folder = Path(out)
    settings = {"task": "index", "shard_size": shard_size}
    writer = EmbeddingWriter(folder, model_id or getattr(getattr(model, "cfg", None), "name", "model"), settings,
                             overwrite)  # fmt: skip
    before = writer.count
    if overwrite:
        for name in (INDEX_NAME, FAISS_NAME, CAPTIONS_NAME):
            (folder / name).unlink(missing_ok=True)
    previous = read_index_info(folder) if is_index_folder(folder) else None
    pending = [item for item in items if item.key not in writer.done]
    config = model_data_config(model)
    draft = ImageTransform(config.image_size, config.transform, False).draft_size
    skipped: Counter[str] = Counter()
    bar = tqdm(total=len(items), initial=len(items) - len(pending), unit="img", file=sys.stderr,
               disable=not progress, dynamic_ncols=True, desc="index")  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        # a shard is a fixed run of inputs, written whole: a stopped build resumes at a shard boundary
        for start in range(0, len(pending), shard_size):
            keys, vectors, bad = [], [], []
            shard = pending[start : start + shard_size]
            for offset in range(0, len(shard), batch_size):
                chunk = shard[offset : offset + batch_size]
                k, v, s = embed_items(model, chunk, draft, config.max_image_pixels)
                keys += k
                vectors += v
                bad += s
                bar.update(len(chunk))
            skipped.update(b["error"].partition(":")[0] for b in bad)
            writer.write_shard(keys, np.stack(vectors) if vectors else np.zeros((0, 0), np.float32), bad)
    finally:
        model.train(was_training)
        bar.close()
    if writer.count == 0:
        raise ConfigError(f"vlp index build: none of the {len(items)} inputs could be embedded ({dict(skipped)})")
    meta = read_meta(folder)
    plan = index_plan(writer.count, int(meta["dim"]), options)
    same = previous is not None and previous.get("count") == writer.count
    same = same and {k: previous.get(k) for k in plan} == plan
    opened = OpenedIndex(folder) if same else index_embeddings(folder, options, specs, model_id, folders=folders)
    opened.report = {"embedded": writer.count - before, "resumed": len(items) - len(pending),
                     "skipped": dict(skipped), "plan": plan, "rebuilt": not same}  # fmt: skip
    return opened


def index_embeddings(
    folder: str | Path,
    options: IndexOptions | None = None,
    inputs: list[str] = (),
    model_id: str = "",
    *,
    folders: set[str] | None = None,
) -> OpenedIndex:
    """Index the embeddings folder ``folder`` (written by :func:`build_index` or ``vlp predict embed``) as
    ``options`` say; ``inputs`` (absolute specs) give the roots and captions; ``folders``: which of them
    are folders, when the caller's :func:`list_inputs` has just said. Returns the opened index."""
    folder = Path(folder)
    # the shards stay memory-mapped: an exact index needs none of their rows here, IVF-PQ reads a training
    # sample and then adds shard by shard (1M x 512 rows are 2 GB; loading them all held them twice)
    shards, keys = read_embedding_shards(folder)
    if not keys:
        raise ConfigError(f"{folder}: holds no embeddings to index")
    meta = read_meta(folder)  # once: its dim here, its model in index.json
    dim = int(meta["dim"])
    plan = index_plan(len(keys), dim, options or IndexOptions())
    specs = list(inputs)
    (folder / INDEX_NAME).unlink(missing_ok=True)  # the folder is unfinished until index.json is rewritten
    if plan["type"] == "ivfpq":
        faiss = import_faiss("an IVF-PQ index")
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFPQ(quantizer, dim, plan["nlist"], plan["m"], plan["nbits"], faiss.METRIC_INNER_PRODUCT)
        # a seeded sample trains the coarse and product quantizers (FAISS wants 39..256 points a centroid)
        sample = max(plan["nlist"] * 256, 2 ** plan["nbits"] * 256)
        rows = np.random.default_rng(0).permutation(len(keys))[:sample] if len(keys) > sample else np.arange(len(keys))
        ivf.train(_gather_rows(shards, rows, dim))
        for shard in shards:  # added in row order, so ids are row numbers as when added at once
            ivf.add(np.ascontiguousarray(shard, dtype=np.float32))
        tmp = folder / f".{FAISS_NAME}.tmp"
        faiss.write_index(ivf, str(tmp))
        os.replace(tmp, folder / FAISS_NAME)
    else:
        (folder / FAISS_NAME).unlink(missing_ok=True)
    captions = input_captions(specs, keys)
    if captions is not None:
        write_atomic(folder / CAPTIONS_NAME, "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in captions))
    else:
        (folder / CAPTIONS_NAME).unlink(missing_ok=True)
    info = {"format": FORMAT, "model": model_id or meta.get("model"), **plan, "count": len(keys),
            "dim": dim, "roots": input_roots(specs, folders), "inputs": specs,
            "captions": captions is not None}  # fmt: skip
    write_atomic(folder / INDEX_NAME, json.dumps(info, indent=1) + "\n")
    del shards, keys, captions  # OpenedIndex reads the paths again: 10^6 keys held twice would cost ~100 MB
    return OpenedIndex(folder)


def _gather_rows(shards: list[np.ndarray], rows: np.ndarray, dim: int) -> np.ndarray:
    """``(len(rows), dim)`` float32: the rows ``rows`` (global row numbers, in that order) of the shards."""
    starts = np.cumsum([0] + [len(s) for s in shards])
    which = np.searchsorted(starts, rows, side="right") - 1
    out = np.empty((len(rows), dim), dtype=np.float32)
    for s in np.unique(which):
        picked = which == s
        out[picked] = shards[s][rows[picked] - starts[s]]
    return out


# ----------------------------------------------------------------------------- searching


@dataclass
class Hit:
    """One result: its rank (0 = best), row id, stored path, index score (cosine), caption, and the ITM
    match logit when re-ranked (then the ranking follows it)."""

    rank: int
    id: int
    path: str
    score: float
    caption: str | None = None
    itm: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def is_image_query(query: Any) -> bool:
    """A PIL image or a path of an existing image file is an image query; any other string is text."""
    if isinstance(query, Image.Image):
        return True
    if isinstance(query, Path):
        return True
    return isinstance(query, str) and Path(query).suffix.lower() in IMAGE_SUFFIXES and Path(query).is_file()


def embed_query(model: Any, tokenizer: Any, query: Any) -> np.ndarray:
    """``(1, D)`` normalised embedding of a text or an image query."""
    if is_image_query(query):
        image = query if isinstance(query, Image.Image) else read_input(ImageInput(str(query), path=Path(query)))
        return embed_batch(model, [image])
    if not isinstance(query, str) or not query.strip():
        raise ConfigError(f"query: expected a text or an image file, got {query!r}")
    if Path(query).suffix.lower() in IMAGE_SUFFIXES and " " not in query.strip():
        raise ConfigError(f"query {query}: no such image file (a text query is searched as text)")
    if tokenizer is None:
        raise ConfigError("a text query needs the model's tokenizer")
    with torch.no_grad():
        return encode_texts(model, tokenizer, [query], model_data_config(model).max_text_len).float().cpu().numpy()


def load_key(key: str) -> Image.Image:
    """The image a stored path names: a file, or ``SHARD.tar/MEMBER`` inside a WebDataset shard."""
    path = Path(key)
    if path.is_file():
        return read_input(ImageInput(key, path=path))
    shard = next((p for p in path.parents if p.suffix.lower() == ".tar" and p.is_file()), None)
    if shard is None:
        raise ImageError("missing_file", key)
    item = next((i for i in list_inputs([str(shard)]) if i.key == key), None)
    if item is None:
        raise ImageError("missing_file", key)
    return read_input(item)


def itm_scores(model: Any, tokenizer: Any, text: str, images: list[Image.Image]) -> torch.Tensor:
    """``(N,)`` ITM match logits of ``text`` against each image (one fusion pass per pair)."""
    device = next(model.parameters()).device
    batch = image_batch(model, images)
    encoded = encode(model, [batch], [text], tokenizer, mode="two_stage", device=device,
                     max_text_len=model_data_config(model).max_text_len)  # fmt: skip
    scorer = pair_scorer(model, encoded, device)
    return scorer(torch.arange(len(images)), torch.zeros(len(images), dtype=torch.long)).float().cpu()


def search(
    index: OpenedIndex | str | Path,
    model: Any,
    tokenizer: Any,
    query: Any,
    k: int = 10,
    rerank: bool = False,
    rerank_k: int | None = None,
    nprobe: int | None = None,
) -> list[Hit]:
    """The ``k`` best images of ``index`` for a text or an image ``query`` (a PIL image or an image path).

    ``rerank``: a fusion model's ITM head re-scores the top ``rerank_k`` (default ``max(k, 32)``) of the
    index, and the ``k`` best by ITM are returned (text queries only). ``nprobe``: IVF-PQ lists searched.
    """
    index = index if isinstance(index, OpenedIndex) else open_index(index)
    if k < 1:
        raise ConfigError(f"-k: must be >= 1, got {k}")
    if rerank:
        if is_image_query(query):
            raise ConfigError("--rerank: ITM scores an image against a text; it re-ranks text queries only")
        if not has_fusion(model) or "itm" not in getattr(model, "heads", {}):
            raise ConfigError("--rerank needs a fusion model with an ITM head (ALBEF, BLIP); this model has none")
    was_training = model.training
    model.eval()
    try:
        vector = embed_query(model, tokenizer, query)
        if vector.shape[1] != index.dim:
            raise ConfigError(f"the model embeds in {vector.shape[1]} dimensions but the index holds {index.dim}-d "
                              f"vectors (built with {index.info.get('model')}); search with that model")  # fmt: skip
        shortlist = max(k, rerank_k or 32) if rerank else k
        scores, ids = index.search(vector, shortlist, nprobe)
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        itm: dict[int, float] = {}
        if rerank and pairs:
            readable, images = [], []
            for i, _ in pairs:
                try:
                    images.append(load_key(index.paths[i]))
                    readable.append(i)
                except ImageError:
                    continue  # a file gone since the build cannot be re-scored; it keeps its index rank below
            if images:
                with torch.no_grad():
                    itm = dict(zip(readable, itm_scores(model, tokenizer, query, images).tolist()))
            pairs.sort(key=lambda p: (p[0] not in itm, -itm.get(p[0], 0.0)))
    finally:
        model.train(was_training)
    captions = index.captions
    return [Hit(rank, i, index.paths[i], s, captions[i] if captions else None, itm.get(i))
            for rank, (i, s) in enumerate(pairs[:k])]  # fmt: skip


__all__ = [
    "AUTO_EXACT_BELOW",
    "Hit",
    "IndexOptions",
    "OpenedIndex",
    "build_index",
    "exact_search",
    "import_faiss",
    "index_embeddings",
    "index_plan",
    "is_image_query",
    "is_index_folder",
    "open_index",
    "search",
]
