"""`vlp serve`'s HTTP API on a real uvicorn server at 127.0.0.1: every endpoint's answer equals the task API
(or a brute-force search) on the same inputs; images are served only from the indexed roots; bad input gets a
4xx naming what to change."""

from __future__ import annotations

import io
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from serve_helpers import draw, multipart, png_bytes, request

from vlp.cli import build_parser
from vlp.serve.app import build_app
from vlp.serve.gallery import Gallery, open_gallery
from vlp.serve.limits import Gate, Limits, RequestError
from vlp.serve.predictor import Predictor
from vlp.serve.server import BackgroundServer
from vlp.tasks import captioning, perception, vqa
from vlp.tasks.common import image_batch, load_model
from vlp.tasks.zeroshot import classify

LIMITS = Limits(max_upload_bytes=200_000, max_pixels=300 * 300, max_k=50, max_text_chars=200)


@pytest.fixture(scope="module")
def loaded(served_files):
    return load_model(served_files["model"])


@pytest.fixture(scope="module")
def server(served_files, loaded):
    predictor = Predictor([("tiny-blip", loaded)], open_gallery(served_files["index"]), num_beams=2)
    with BackgroundServer(build_app(predictor, LIMITS), stop_after=300) as running:
        yield running


def upload(url: str, fields: dict[str, str], image: Image.Image | bytes | None) -> tuple[int, dict]:
    data = png_bytes(image) if isinstance(image, Image.Image) else image
    body, kind = multipart(fields, data)
    return request(url, body, kind)


def test_health_names_the_model_of_every_endpoint(server):
    status, body = request(server.url + "/health")
    assert status == 200 and body["status"] == "ok"
    assert body["endpoints"] == {e: "tiny-blip" for e in ("embed", "search", "zeroshot", "caption", "vqa", "ground")}
    assert body["index"] == {"images": 8, "dim": 16}


def test_text_search_equals_brute_force_over_the_stored_embeddings(server, served_files, loaded):
    status, body = request(server.url + "/search?q=a+red+circle&k=5")
    assert status == 200
    stored = np.load(served_files["index"] / "embeddings-00000.npy")
    names = (served_files["index"] / "paths.txt").read_text().split()
    tok = loaded.tokenizer(["a red circle"], max_length=24)
    with torch.no_grad():
        query = loaded.model.encode_text(tok.input_ids, tok.attention_mask.bool(), tok.token_type_ids).numpy()[0]
    scores = stored @ query
    best = np.argsort(-scores)[:5]
    assert [r["id"] for r in body["results"]] == best.tolist()
    assert [r["name"] for r in body["results"]] == [names[i].rsplit("/", 1)[1] for i in best]
    assert [r["score"] for r in body["results"]] == pytest.approx(scores[best].tolist(), abs=1e-5)
    assert all(r["url"] == f"/image/{r['id']}" for r in body["results"])
    # an image query through POST, and the file behind a result comes back byte for byte
    status, by_image = upload(server.url + "/search", {"k": "3"}, draw("red", "circle"))
    assert status == 200 and len(by_image["results"]) == 3
    first = body["results"][0]
    with urllib.request.urlopen(server.url + first["url"], timeout=10) as response:
        assert response.read() == (served_files["images"] / first["name"]).read_bytes()


def test_caption_vqa_ground_zeroshot_and_embed_equal_the_task_apis(server, loaded):
    image = draw("blue", "square", size=64)
    decoded = Image.open(io.BytesIO(png_bytes(image))).convert("RGB")
    model, tok = loaded.model, loaded.tokenizer

    status, body = upload(server.url + "/caption", {}, image)
    assert status == 200
    expected = captioning.caption(model, tok, [decoded], "beam", prompt="a picture of ", num_beams=2, max_new_tokens=20)
    assert body["caption"] == expected[0]

    status, body = upload(server.url + "/vqa", {"question": "what color is the shape ?"}, image)
    assert status == 200 and body["answer"] == vqa.predict(model, tok, [decoded], ["what color is the shape ?"])[0]

    status, body = upload(server.url + "/ground", {"text": "a blue square"}, image)
    box = perception.locate_text(model, tok, decoded, "a blue square")[0]
    assert status == 200 and body["box"] == pytest.approx(list(box), abs=0.01)
    assert (body["width"], body["height"]) == (64, 64)

    status, body = upload(server.url + "/zeroshot", {"labels": "circle, square,triangle"}, image)
    _, probs = classify(model, tok, [decoded], ["circle", "square", "triangle"], ["a photo of a {}."])
    assert status == 200 and sorted(p["label"] for p in body["labels"]) == ["circle", "square", "triangle"]
    got = {p["label"]: p["prob"] for p in body["labels"]}
    assert [got[n] for n in ("circle", "square", "triangle")] == pytest.approx(probs[0].tolist(), abs=1e-5)

    body_bytes, kind = multipart({"text": "a red circle"}, png_bytes(image))
    status, body = request(server.url + "/embed", body_bytes, kind)
    tok_out = tok(["a red circle"], max_length=24)
    with torch.no_grad():
        text = model.encode_text(tok_out.input_ids, tok_out.attention_mask.bool(), tok_out.token_type_ids)
        pixels = model.encode_image(image_batch(model, [decoded]))
    assert status == 200
    assert np.allclose(body["text"], text.numpy(), atol=1e-5) and np.allclose(body["image"], pixels[0], atol=1e-5)
    status, body = request(server.url + "/embed", b'{"text": ["a", "b"]}', "application/json")
    assert status == 200 and len(body["text"]) == 2


def test_no_file_outside_the_indexed_roots_is_named_or_sent(served_files, loaded):
    gallery = open_gallery(served_files["traversal"], [served_files["images"]])
    assert len(gallery) == 10  # 8 images, then `images/../secret.png`, then a symlink to the secret
    predictor = Predictor([("tiny-blip", loaded)], gallery)
    secret = served_files["secret"].read_bytes()
    with BackgroundServer(build_app(predictor, LIMITS), stop_after=120) as running:
        status, body = request(running.url + "/search?q=a+red+circle&k=10")
        assert status == 200 and sorted(r["id"] for r in body["results"]) == list(range(8))
        assert all("secret" not in r["name"] and ".." not in r["name"] for r in body["results"])
        attempts = ["/image/8", "/image/9", "/image/10", "/image/-1", "/image/..%2F..%2Fsecret.png",
                    "/image/%2e%2e/secret.png", "/static/..%2F..%2Fsecret.png", "/static/../../secret.png"]  # fmt: skip
        for path in attempts:
            req = urllib.request.Request(running.url + path)
            try:
                with urllib.request.urlopen(req, timeout=10) as response:
                    got = response.read()
                    assert got != secret, f"{path} sent the secret"
            except urllib.error.HTTPError as err:
                assert err.code == 404, (path, err.code)


def test_bad_input_gets_a_4xx_that_says_what_to_change(server):
    url = server.url
    cases = [
        (upload(url + "/caption", {}, None), 400, "send an image"),
        (upload(url + "/caption", {}, b"not an image at all"), 400, "not a readable image"),
        (upload(url + "/caption", {}, Image.new("RGB", (400, 400))), 413, "the limit is 90000 pixels"),
        (upload(url + "/caption", {}, b"\0" * 250_000), 413, "the limit is 200000 bytes"),
        (upload(url + "/vqa", {}, draw("red", "circle")), 400, "question: missing"),
        (upload(url + "/zeroshot", {"labels": " , "}, draw("red", "circle")), 400, "send class names"),
        (upload(url + "/zeroshot", {"labels": "a", "templates": "no slot"}, draw("red", "circle")), 400, "'{}'"),
        (request(url + "/search?q=x&k=0"), 400, "k: must be between 1 and 50"),
        (request(url + "/search?q=x&k=ten"), 400, "k: expected a whole number"),
        (request(url + "/search?q=" + "x" * 201), 413, "the limit is 200"),
        (request(url + "/search"), 400, "send a text query"),
        (request(url + "/search", b"q=x", "text/plain"), 415, "multipart/form-data"),
        (request(url + "/embed", b"{not json", "application/json"), 400, "does not parse"),
    ]
    for (status, body), want_status, words in cases:
        assert status == want_status and words in body["error"], (want_status, words, status, body)


def test_a_streamed_body_over_the_limit_is_cut_off_with_413(server):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    body, kind = multipart({}, b"\0" * 300_000)
    conn.putrequest("POST", "/caption")
    conn.putheader("Content-Type", kind)
    conn.putheader("Transfer-Encoding", "chunked")  # no Content-Length: the limit must count the bytes
    conn.endheaders()
    for start in range(0, len(body), 65536):
        piece = body[start : start + 65536]
        conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    assert response.status == 413 and b"200000 bytes" in response.read()
    conn.close()


def test_gate_bounds_concurrent_calls_and_answers_503_and_504_without_waiting_on_speed():
    import asyncio

    def holder(release: threading.Event, counts: dict[str, int], lock: threading.Lock):
        def held() -> str:
            with lock:
                counts["inside"] += 1
                counts["peak"] = max(counts["peak"], counts["inside"])
            release.wait(20)  # held until the test lets go, whatever the machine's speed
            with lock:
                counts["inside"] -= 1
            return "done"

        return held

    async def scenario() -> tuple[list, list, dict]:
        first, second, lock = threading.Event(), threading.Event(), threading.Lock()
        stuck = {"inside": 0, "peak": 0}
        gate = Gate(limit=2, timeout_s=0.3)
        outcomes = await asyncio.gather(
            *(gate.run(holder(first, stuck, lock)) for _ in range(3)), return_exceptions=True
        )
        # the two admitted calls passed the deadline (504), the third never got a slot (503)
        statuses = sorted(o.status for o in outcomes if isinstance(o, RequestError))
        first.set()
        counts = {"inside": 0, "peak": 0}
        waiting = Gate(limit=2, timeout_s=20)
        calls = asyncio.gather(*(waiting.run(holder(second, counts, lock)) for _ in range(5)))
        for _ in range(2000):  # until two calls are inside (bounded: 20 s)
            if counts["inside"] == 2:
                break
            await asyncio.sleep(0.01)
        second.set()
        return statuses, await calls, counts

    statuses, done, counts = asyncio.run(scenario())
    assert statuses == [503, 504, 504]
    assert done == ["done"] * 5 and counts["peak"] == 2


def test_serve_binds_to_localhost_unless_told_otherwise_and_limits_are_options():
    args = build_parser().parse_args(["serve", "some-model"])
    assert args.host == "127.0.0.1"
    assert (args.max_upload_mb, args.max_megapixels, args.request_timeout, args.max_concurrent) == (10.0, 40.0, 60, 2)
    with pytest.raises(ValueError, match="max_concurrent must be a positive integer"):
        Limits(max_concurrent=0)


def test_gallery_search_returns_the_exact_top_k_and_a_big_k_in_order():
    gen = np.random.default_rng(0)
    vectors = gen.normal(size=(500, 8)).astype(np.float32)
    gallery = Gallery(vectors, [f"/x/{i}.png" for i in range(500)], roots=["/x"])
    queries = gen.normal(size=(3, 8)).astype(np.float32)
    for k in (1, 10, 500, 900):
        scores, ids = gallery.search(queries, k)
        expected = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, : min(k, 500)]
        assert (ids == expected).all()
    with pytest.raises(ValueError, match="the index holds 8-d vectors"):
        gallery.search(np.zeros((1, 4)), 3)


def test_page_and_its_files_load_nothing_from_elsewhere(server):
    for path in ("/", "/static/app.js", "/static/style.css"):
        with urllib.request.urlopen(server.url + path, timeout=10) as response:
            text = response.read().decode()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path


def test_vlp_serve_command_serves_until_its_deadline(served_files, capsys):
    import socket
    import time

    from vlp.cli import main

    with socket.socket() as probe:  # a free port for the command's own --port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["serve", str(served_files["model"]), "--index", str(served_files["index"]), "--port", str(port),
            "--stop-after", "10", "--threads", "1"]  # fmt: skip
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(main(argv)), daemon=True)
    thread.start()
    health = None
    for _ in range(300):  # up to 30 s for the model to load and the server to listen
        try:
            health = request(f"http://127.0.0.1:{port}/health")
            break
        except OSError:
            time.sleep(0.1)
    assert health is not None and health[0] == 200 and health[1]["index"]["images"] == 8
    thread.join(40)  # --stop-after ends it by itself
    assert codes == [0]
    out = capsys.readouterr().out
    assert f"http://127.0.0.1:{port}/" in out and "/caption   model" in out


def test_a_fine_tuned_vqa_head_answers_before_a_decoder_fallback(loaded):
    from types import SimpleNamespace

    heads = {"vqa": None}
    classifier = SimpleNamespace(
        model=SimpleNamespace(heads=heads, cfg=None, decoder=None), task={"answer_vocab": ["a"]}
    )
    predictor = Predictor([("blip", loaded), ("vqa-run", classifier)])
    assert predictor.route["vqa"].name == "vqa-run" and predictor.route["caption"].name == "blip"
    assert predictor.describe()["models"][1]["can"] == {"vqa": "classify"}


def test_serve_searches_a_vlp_index_build_folder_through_its_index(served_files, loaded, tmp_path):
    from vlp.cli import main
    from vlp.tasks.retrieval.index import open_index

    out = tmp_path / "built"
    assert main(["index", "build", str(served_files["model"]), str(served_files["images"]), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    gallery = open_gallery(out)
    assert gallery.roots == [served_files["images"].resolve()] and gallery.ann is not None
    predictor = Predictor([("tiny-blip", loaded)], gallery)
    with BackgroundServer(build_app(predictor, LIMITS), stop_after=120) as running:
        status, body = request(running.url + "/search?q=a+green+square&k=4")
    query = predictor.embed_texts(["a green square"])
    _, ids = open_index(out).search(query, 4)
    assert status == 200 and [r["id"] for r in body["results"]] == ids[0].tolist()
    names = {Path(p).name for p in open_index(out).paths}
    assert {r["name"] for r in body["results"]} <= names  # link.png, the symlink out, is not among them
