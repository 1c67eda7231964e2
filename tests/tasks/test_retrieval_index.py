"""Search your own images: ``build_index`` / ``open_index`` / ``search`` and ``vlp index build`` / ``vlp search``.

Exact search equals a numpy brute force (with and without faiss), IVF-PQ recall@10 against exact on
clustered random vectors stays above a stated bound, an interrupted build resumes to the uninterrupted
result, text and image queries rank as the model's own embeddings do, and ``rerank`` runs ITM on the
shortlist only (counted on a designed model)."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import vlp
from vlp.cli import main
from vlp.config import ConfigError
from vlp.core.outputs import FusedOutput, ModelOutputs, VisualTokens
from vlp.data.config import DataConfig
from vlp.io.embeddings import EmbeddingWriter, read_embeddings
from vlp.io.folders import load_model
from vlp.tasks.common import model_data_config, preprocess_images
from vlp.tasks.retrieval.index import IndexOptions, build_index, index_embeddings, open_index, search
from vlp.text import Tokenizer

NO_FAISS = "faiss-cpu is not installed (pip install 'vlp[faiss]')"


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def vector_index(folder: Path, vectors: np.ndarray, options: IndexOptions, shard: int = 1000):
    """An index over given vectors (rows named v0, v1, ...), written in shards as a build writes them."""
    writer = EmbeddingWriter(folder, "vectors")
    for start in range(0, len(vectors), shard):
        rows = vectors[start : start + shard]
        writer.write_shard([f"v{i}" for i in range(start, start + len(rows))], rows)
    return index_embeddings(folder, options)


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
def test_exact_search_equals_a_numpy_brute_force(tmp_path, backend, monkeypatch):
    if backend == "faiss":
        pytest.importorskip("faiss", reason=NO_FAISS)
    else:
        monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` fails as when it is not installed
    rng = np.random.default_rng(0)
    vectors, queries = unit(rng.normal(size=(700, 24))), unit(rng.normal(size=(9, 24)))
    index = vector_index(tmp_path / "flat", vectors, IndexOptions(), shard=256)
    assert index.type == "flat" and index.backend == backend and len(index) == 700
    scores, ids = index.search(queries, 10)
    brute = queries @ vectors.T
    expected = np.argsort(-brute, axis=1)[:, :10]
    assert np.array_equal(ids, expected)
    assert np.allclose(scores, np.take_along_axis(brute, expected, axis=1), atol=1e-5)
    scores, ids = index.search(queries[:1], 705)  # more than the index holds: padded with -1
    assert (ids[0, :700] >= 0).all() and (ids[0, 700:] == -1).all()


def test_ivfpq_recall_at_10_against_exact(tmp_path):
    pytest.importorskip("faiss", reason=NO_FAISS)
    rng = np.random.default_rng(1)
    # 4000 vectors around 50 centres (embeddings cluster; uniform noise has no neighbours to find)
    centres = rng.normal(size=(50, 64))
    data = unit(centres[rng.integers(0, 50, 4000)] + 0.35 * rng.normal(size=(4000, 64)))
    queries = unit(centres[rng.integers(0, 50, 200)] + 0.35 * rng.normal(size=(200, 64)))
    index = vector_index(tmp_path / "ivf", data, IndexOptions(exact_below=1000))
    # auto: 4000 >= exact_below -> IVF-PQ; nlist = min(4 sqrt(4000), 4000 // 39) = 102, m = 64 / 4, nprobe 16
    assert index.type == "ivfpq"
    assert {k: index.info[k] for k in ("nlist", "m", "nbits", "nprobe", "refine")} == {
        "nlist": 102, "m": 32, "nbits": 8, "nprobe": 16, "refine": 10}  # fmt: skip
    truth = np.argsort(-(queries @ data.T), axis=1)[:, :10]
    found = index.search(queries, 10)[1]
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall >= 0.95, recall  # measured 1.0 (0.56 from the PQ codes alone, before re-scoring 10 x k)
    full = index.search(queries, 10, nprobe=102)[1]  # nprobe = nlist: every list searched
    assert np.mean([len(set(f) & set(t)) / 10 for f, t in zip(full, truth)]) >= recall


@pytest.mark.parametrize("sampled", [False, True])
def test_ivfpq_built_from_mapped_shards_equals_one_in_memory_build(tmp_path, sampled):
    """Training on the sampled rows gathered from the memory-mapped shards and adding shard by shard gives the
    index that training on ``vectors[rows]`` and adding every row at once gives (the build before: same codes)."""
    faiss = pytest.importorskip("faiss", reason=NO_FAISS)
    rng = np.random.default_rng(3)
    data = unit(rng.normal(size=(5000, 16)))
    options = IndexOptions(index_type="ivfpq", nlist=4, m=4, nbits=4 if sampled else 8)
    vector_index(tmp_path / "ivf", data, options, shard=1400)
    # the reference: what index_embeddings did with every row loaded; 4-bit codes train on 2^4 x 256 sampled rows
    rows = np.random.default_rng(0).permutation(5000)[: 16 * 256] if sampled else slice(None)
    reference = faiss.IndexIVFPQ(faiss.IndexFlatIP(16), 16, 4, 4, options.nbits, faiss.METRIC_INNER_PRODUCT)
    stored = read_embeddings(tmp_path / "ivf")[0]  # the rows as written (normalised again by the writer)
    reference.train(np.ascontiguousarray(stored[rows]))
    reference.add(stored)
    ours = faiss.read_index(str(tmp_path / "ivf" / "index.faiss"))
    for built in (ours, reference):
        built.nprobe = 4
    queries = unit(rng.normal(size=(20, 16)))
    assert np.array_equal(ours.search(queries, 15)[1], reference.search(queries, 15)[1])
    assert np.array_equal(ours.search(queries, 15)[0], reference.search(queries, 15)[0])
    assert faiss.serialize_index(ours).tobytes() == faiss.serialize_index(reference).tobytes()


def test_indexing_an_embeddings_folder_never_loads_all_rows(tmp_path, monkeypatch):
    """An exact index over the shards reads them memory-mapped: 1M x 512 rows are 2 GB, which loading every
    shard and concatenating them held twice (4 GB peak for an index that needs none of the rows in memory)."""
    vectors = unit(np.random.default_rng(4).normal(size=(900, 8)))
    writer = EmbeddingWriter(tmp_path / "flat", "vectors")
    for start in range(0, 900, 300):
        writer.write_shard([f"v{i}" for i in range(start, start + 300)], vectors[start : start + 300])
    loads = []
    real_load = np.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("mmap_mode"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", recording_load)
    index = index_embeddings(tmp_path / "flat", IndexOptions(index_type="flat"))
    assert loads and all(mode == "r" for mode in loads), loads
    monkeypatch.setattr(np, "load", real_load)
    stored = np.concatenate([np.load(tmp_path / "flat" / f"embeddings-{i:05d}.npy") for i in range(3)])
    assert np.allclose(stored, vectors, atol=1e-6)
    assert np.array_equal(index.vectors(), stored)
    assert np.array_equal(read_embeddings(tmp_path / "flat")[0], stored)  # read whole: the same rows


def test_without_faiss_ivfpq_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    vectors = unit(np.random.default_rng(2).normal(size=(300, 16)))
    with pytest.raises(ConfigError, match=r"needs faiss: pip install 'vlp\[faiss\]'.*exact index"):
        vector_index(tmp_path / "ivf", vectors, IndexOptions(index_type="ivfpq"))
    with pytest.raises(ConfigError, match=r"IVF-PQ .* needs at least 256 images .* the index has 40"):
        vector_index(tmp_path / "small", vectors[:40], IndexOptions(index_type="ivfpq", nlist=4))


# ----------------------------------------------------------------------------- real images, a real model


def write_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        base = rng.integers(0, 255, 3)
        pixels = np.clip(base + rng.normal(0, 30, (36, 36, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i:02d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    tok = Tokenizer.train(["a dog on a beach", "a red square", "a photo of a cat"] * 3, vocab_size=90)
    torch.manual_seed(0)
    return vlp.save_pretrained(vlp.create_model("clip-tiny"), tmp_path_factory.mktemp("clip") / "m", tokenizer=tok)


class Interrupt(Exception):
    pass


def test_an_interrupted_build_resumes_to_the_uninterrupted_result(clip_dir, tmp_path):
    photos = write_photos(tmp_path / "photos", 11)
    model = load_model(clip_dir).model
    full = build_index(model, [tmp_path / "photos"], tmp_path / "full", shard_size=4, batch_size=3, progress=False)
    seen: list[int] = []
    encode = model.encode_image

    def stopping(batch):
        if sum(seen) >= 5:  # the second shard (images 4..7) stops after its first batch
            raise Interrupt
        seen.append(len(batch.images))
        return encode(batch)

    model.encode_image = stopping
    with pytest.raises(Interrupt):
        build_index(model, [tmp_path / "photos"], tmp_path / "resumed", shard_size=4, batch_size=3, progress=False)
    assert read_embeddings(tmp_path / "resumed")[1] == [str(p) for p in photos[:4]]  # shard 0 only
    assert not (tmp_path / "resumed" / "index.json").exists()  # unfinished: no index yet
    seen.clear()
    model.encode_image = lambda batch: seen.append(len(batch.images)) or encode(batch)
    resumed = build_index(model, [tmp_path / "photos"], tmp_path / "resumed", shard_size=4, batch_size=3,
                          progress=False)  # fmt: skip
    assert sum(seen) == 7 and resumed.report["resumed"] == 4 and resumed.report["embedded"] == 7
    a, keys_a = read_embeddings(tmp_path / "full")
    b, keys_b = read_embeddings(tmp_path / "resumed")
    assert keys_a == keys_b == [str(p) for p in photos] and np.allclose(a, b, atol=1e-6)
    assert len(full) == len(resumed) == 11
    seen.clear()
    again = build_index(model, [tmp_path / "photos"], tmp_path / "resumed", shard_size=4, progress=False)
    assert seen == [] and again.report["rebuilt"] is False  # nothing new: nothing embedded, index kept


def test_search_by_text_and_by_image_ranks_as_the_model_embeds(clip_dir, tmp_path):
    photos = write_photos(tmp_path / "photos", 12, seed=3)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not a jpeg")
    loaded = load_model(clip_dir)
    model, tok = loaded.model, loaded.tokenizer
    index = build_index(model, [tmp_path / "photos"], tmp_path / "index", progress=False)
    assert index.report["skipped"] == {"not_an_image": 1} and len(index) == 12
    config = model_data_config(model)
    with torch.no_grad():  # one image at a time, as an independent reference
        images = torch.cat([model.encode_image(preprocess_images([p], config)) for p in photos])
        text = model.encode_text(tok(["a dog on a beach"], max_length=config.max_text_len).input_ids)
    sims = (images @ text[0]).numpy()
    hits = search(index, model, tok, "a dog on a beach", k=5)
    assert [h.path for h in hits] == [str(photos[i]) for i in np.argsort(-sims)[:5]]
    assert [h.score for h in hits] == pytest.approx(np.sort(sims)[::-1][:5].tolist(), abs=1e-5)
    sims = (images @ images[7]).numpy()
    hits = search(tmp_path / "index", model, tok, str(photos[7]), k=4)  # by image: the folder opened by path
    assert hits[0].path == str(photos[7]) and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.path for h in hits] == [str(photos[i]) for i in np.argsort(-sims)[:4]]
    with pytest.raises(ConfigError, match="--rerank needs a fusion model with an ITM head"):
        search(index, model, tok, "a dog", k=3, rerank=True)
    with pytest.raises(ConfigError, match="no such image file"):
        search(index, model, tok, "missing.jpg", k=3)


def test_cli_build_and_search_with_captions_from_a_manifest(clip_dir, tmp_path, capsys):
    photos = write_photos(tmp_path / "shots", 6, seed=5)
    lines = [{"image": p.name, "caption": f"picture number {i}"} for i, p in enumerate(photos)]
    (tmp_path / "shots" / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "index"
    assert main(["index", "build", str(clip_dir), str(tmp_path / "shots" / "captions.jsonl"), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    assert "6 embedded, 0 skipped, 0 already done; 6 images" in capsys.readouterr().err
    info = json.loads((out / "index.json").read_text())
    assert info["model"] == str(clip_dir.resolve()) and info["captions"] and info["roots"] == [str(tmp_path / "shots")]
    assert main(["search", str(out), "a red square", "-k", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3
    hits = search(open_index(out), *(lambda m: (m.model, m.tokenizer))(load_model(clip_dir)), "a red square", k=3)
    for line, hit in zip(printed, hits):
        assert line.split() == [str(hit.rank + 1), f"{hit.score:.4f}", hit.path, "|", *hit.caption.split()]
        assert hit.caption == f"picture number {photos.index(Path(hit.path))}"
    assert main(["search", str(out), str(photos[2]), "-k", "1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["path"] == str(photos[2]) and record["caption"] == "picture number 2"
    assert main(["search", str(tmp_path), "x"]) == 2
    assert "no index.json; not a finished `vlp index build` folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- ITM re-ranking


class DesignedFusion(nn.Module):
    """Image embedding (1, v) normalised, v = the image's mean pixel, so a text (embedded as (0, 1)) ranks
    images by brightness; the ITM head's match logit is -v: darker wins. ``fused_pairs`` counts ITM pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.cfg = type("Cfg", (), {"use_tags": False, "name": "designed", "vision": None})()
        self.recipe = type("Recipe", (), {"data": DataConfig(image_size=8)})()
        self.text_proj, self.fusion = nn.Identity(), nn.Identity()
        self.heads = nn.ModuleDict({"itm": ItmHead()})
        self.fused_pairs = 0

    def encode_image(self, batch) -> torch.Tensor:
        v = batch.images.mean(dim=(1, 2, 3))
        return nn.functional.normalize(torch.stack([torch.ones_like(v), v], 1), dim=-1)

    def encode_text(self, ids, mask=None, types=None) -> torch.Tensor:
        return torch.tensor([[0.0, 1.0]]).expand(len(ids), 2)

    def forward(self, batch) -> ModelOutputs:
        out = ModelOutputs(model=self)
        if batch.images is not None:
            v = batch.images.mean(dim=(1, 2, 3))
            out.image = VisualTokens(v[:, None, None], torch.ones(len(v), 1, dtype=torch.bool))
            out.image_embed = self.encode_image(batch)
        if batch.input_ids is not None:
            n = len(batch.input_ids)
            out.text, out.text_mask = torch.zeros(n, 1, 1), torch.ones(n, 1, dtype=torch.bool)
            out.text_embed = self.encode_text(batch.input_ids)
        return out

    def fuse(self, text, text_mask, image) -> FusedOutput:
        self.fused_pairs += text.shape[0]
        return FusedOutput(text=None, image=None, pooled=image.tokens[:, 0, :])


class ItmHead(nn.Module):
    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(pooled), -pooled], dim=1)


def test_rerank_runs_itm_on_the_shortlist_only(tmp_path):
    folder = tmp_path / "grey"
    folder.mkdir()
    for i in range(12):  # image i is grey level 20 i: brighter = higher index score
        Image.new("RGB", (10, 10), (20 * i,) * 3).save(folder / f"{i:02d}.png")
    model = DesignedFusion()
    tok = Tokenizer.train(["a dog on a beach"] * 3, vocab_size=40)
    index = build_index(model, [folder], tmp_path / "index", progress=False)
    plain = search(index, model, tok, "a dog on a beach", k=3)
    assert [Path(h.path).stem for h in plain] == ["11", "10", "09"] and model.fused_pairs == 0
    hits = search(index, model, tok, "a dog on a beach", k=3, rerank=True, rerank_k=5)
    # the shortlist is the 5 brightest (11..7); ITM prefers the darker, so 07, 08, 09 come out first
    assert model.fused_pairs == 5
    assert [Path(h.path).stem for h in hits] == ["07", "08", "09"]
    assert hits[0].itm > hits[1].itm > hits[2].itm
    with pytest.raises(ConfigError, match="re-ranks text queries only"):
        search(index, model, tok, str(folder / "03.png"), k=3, rerank=True)


def test_shard_inputs_keep_their_captions_beside_the_index(clip_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # a small exact index needs no faiss: numpy searches it
    photos = write_photos(tmp_path / "raw", 3, seed=7)
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for i, photo in enumerate(photos):
            tar.add(photo, arcname=f"{i:04d}.png")
            text = f"caption {i}".encode()
            info = tarfile.TarInfo(f"{i:04d}.txt")
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    loaded = load_model(clip_dir)
    index = build_index(loaded.model, [shard], tmp_path / "index", progress=False)
    assert index.paths == [f"{shard}/{i:04d}.png" for i in range(3)] and index.backend == "numpy"
    assert index.captions == ["caption 0", "caption 1", "caption 2"]
    hit = search(index, loaded.model, loaded.tokenizer, str(photos[1]), k=1)[0]
    assert (hit.path, hit.caption, round(hit.score, 4)) == (f"{shard}/0001.png", "caption 1", 1.0)
