"""The HTTP API and web page of ``vlp serve``: a FastAPI app around a :class:`~vlp.serve.predictor.Predictor`.

Endpoints (inputs as multipart form fields, or a JSON object for text-only requests; every answer
is JSON, every refusal ``{"error": message}`` with a 4xx/5xx status):

- ``GET /health``: the models, which one answers each endpoint, the index size, requests running.
- ``POST /embed``: ``text`` (one or more) and/or ``image`` -> ``{"text": [[...]], "image": [...]}``.
- ``GET /search?q=TEXT&k=10`` or ``POST /search`` with ``text`` or ``image`` (and ``k``) -> ``{"results":
  [{"id", "score", "name", "url", "caption"}]}``; ``GET /image/{id}`` sends an indexed image.
- ``POST /zeroshot``: ``image`` + ``labels`` (comma-separated or repeated) [+ ``templates``, ``;``-separated].
- ``POST /caption``: ``image``. ``POST /vqa``: ``image`` + ``question``. ``POST /ground``: ``image`` + ``text``.
- ``GET /``: the web page (``page/``: plain HTML, CSS and JS, nothing loaded from elsewhere).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile

from vlp.config import ConfigError
from vlp.data.image_io import ImageError, decode_image
from vlp.serve.limits import BodyLimit, Gate, Limits, RequestError
from vlp.serve.predictor import Predictor

PAGE = Path(__file__).parent / "page"


class Inputs:
    """A request's fields (form or JSON) and its decoded upload, with checked accessors."""

    def __init__(self, fields: dict[str, list[Any]], image: Any, limits: Limits) -> None:
        self.fields, self.image, self.limits = fields, image, limits

    def texts(self, name: str) -> list[str]:
        out = []
        for value in self.fields.get(name, []):
            if not isinstance(value, str):
                raise RequestError(400, f"{name}: expected text, got {type(value).__name__}")
            if len(value) > self.limits.max_text_chars:
                raise RequestError(
                    413,
                    f"{name}: {len(value)} characters; the limit is {self.limits.max_text_chars} (--max-text-chars)",
                )
            out.append(value)
        return out

    def text(self, name: str, required: bool = True) -> str | None:
        values = [v.strip() for v in self.texts(name)]
        if len(values) > 1:
            raise RequestError(400, f"{name}: expected one value, got {len(values)}")
        if not values or not values[0]:
            if required:
                raise RequestError(400, f"{name}: missing; send a non-empty '{name}' field")
            return None
        return values[0]

    def need_image(self, endpoint: str) -> Any:
        if self.image is None:
            raise RequestError(400, f"/{endpoint}: send an image as the multipart form field 'image'")
        return self.image

    def k(self, default: int = 10) -> int:
        raw = self.text("k", required=False) if "k" in self.fields else None
        if raw is None:
            return default
        try:
            k = int(raw)
        except (TypeError, ValueError):
            raise RequestError(400, f"k: expected a whole number, got {raw!r}") from None
        if not 1 <= k <= self.limits.max_k:
            raise RequestError(400, f"k: must be between 1 and {self.limits.max_k} (--max-k), got {k}")
        return k


async def read_inputs(request: Request, limits: Limits) -> Inputs:
    """The fields and the decoded ``image`` upload of a multipart form, a JSON object or a query string."""
    fields: dict[str, list[Any]] = {k: request.query_params.getlist(k) for k in request.query_params}
    image = None
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.method == "POST":
        if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
            form = await request.form(max_files=1, max_fields=limits.max_labels + 16)
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key != "image":
                        raise RequestError(400, f"{key}: unexpected file; send the image as the field 'image'")
                    image = decode_upload(await value.read(), value.filename, limits)
                else:
                    fields.setdefault(key, []).append(value)
        elif kind == "application/json":
            try:
                body = json.loads(await request.body())
            except ValueError as err:
                raise RequestError(400, f"the JSON body does not parse: {err}") from None
            if not isinstance(body, dict):
                raise RequestError(400, f"the JSON body must be an object, got {type(body).__name__}")
            for key, value in body.items():
                fields.setdefault(key, []).extend(value if isinstance(value, list) else [value])
        elif kind:
            raise RequestError(415, f"content type {kind!r}: send multipart/form-data (with an image) or JSON")
    return Inputs(fields, image, limits)


def decode_upload(data: bytes, filename: str | None, limits: Limits) -> Any:
    """Uploaded bytes -> an upright RGB PIL image; too many pixels is 413, anything unreadable 400."""
    name = filename or "image"
    if not data:
        raise RequestError(400, f"image {name!r}: the upload is empty")
    try:
        return decode_image(data, None, limits.max_pixels)[0]
    except ImageError as err:
        if err.reason == "decompression_bomb":
            raise RequestError(
                413, f"image {name!r}: {err.detail}; the limit is {limits.max_pixels} pixels (--max-pixels)"
            ) from None
        raise RequestError(400, f"image {name!r}: not a readable image ({err})") from None


def build_app(predictor: Predictor, limits: Limits | None = None) -> FastAPI:
    """The FastAPI app: routes, the page, the body-size middleware and the concurrency gate."""
    limits = limits or Limits()
    gate = Gate(limits.max_concurrent, limits.request_timeout_s)
    app = FastAPI(title="vlp serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.predictor, app.state.limits, app.state.gate = predictor, limits, gate
    started = time.time()

    @app.exception_handler(RequestError)
    async def refused(_: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status)

    async def answer(request: Request, endpoint: str, work: Any) -> dict[str, Any]:
        try:
            predictor.need(endpoint)
        except LookupError as err:
            raise RequestError(404 if endpoint == "search" else 501, str(err)) from None
        inputs = await read_inputs(request, limits)
        call = work(inputs)  # checks the inputs here (400s), returns the model call for the gate
        try:
            return await gate.run(call)
        except (ValueError, TypeError, ConfigError) as err:  # the task APIs' own input checks
            raise RequestError(400, f"/{endpoint}: {err}") from None

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.time() - started, 1), "running": gate.running,
                "threads": threading.active_count(), **predictor.describe()}  # fmt: skip

    @app.post("/embed")
    async def embed(request: Request) -> dict[str, Any]:
        def work(inputs: Inputs) -> Any:
            texts = inputs.texts("text")
            if not texts and inputs.image is None:
                raise RequestError(400, "/embed: send one or more 'text' fields, an 'image', or both")

            def call() -> dict[str, Any]:
                out: dict[str, Any] = {}
                if texts:
                    out["text"] = predictor.embed_texts(texts).tolist()
                if inputs.image is not None:
                    out["image"] = predictor.embed_image(inputs.image)[0].tolist()
                return out

            return call

        return await answer(request, "embed", work)

    @app.api_route("/search", methods=["GET", "POST"])
    async def search(request: Request) -> dict[str, Any]:
        def work(inputs: Inputs) -> Any:
            text = inputs.text("q", required=False) or inputs.text("text", required=False)
            if text is None and inputs.image is None:
                raise RequestError(400, "/search: send a text query ('q' or 'text') or an 'image'")
            k = inputs.k()
            return lambda: {"query": text, "k": k, "results": predictor.search(text, inputs.image, k)}

        return await answer(request, "search", work)

    @app.get("/image/{image_id}")
    async def image(image_id: str) -> FileResponse:
        found = None
        if image_id.isdigit() and predictor.gallery is not None:
            found = predictor.gallery.file(int(image_id))
        if found is None:
            raise RequestError(404, f"no servable image with id {image_id[:40]!r} in the index")
        return FileResponse(found[0])

    @app.post("/zeroshot")
    async def zeroshot(request: Request) -> dict[str, Any]:
        def work(inputs: Inputs) -> Any:
            image = inputs.need_image("zeroshot")
            labels = [label.strip() for raw in inputs.texts("labels") for label in raw.split(",") if label.strip()]
            if not labels:
                raise RequestError(400, "/zeroshot: send class names as 'labels' (comma-separated or repeated)")
            if len(labels) > limits.max_labels:
                raise RequestError(413, f"labels: {len(labels)} class names; the limit is {limits.max_labels}")
            raw = inputs.text("templates", required=False)
            templates = [t.strip() for t in raw.split(";") if t.strip()] if raw else None
            for t in templates or []:
                if t.count("{}") != 1:
                    raise RequestError(400, f"templates: {t!r} must contain '{{}}' exactly once (the class name)")
            return lambda: {"labels": predictor.zeroshot(image, labels, templates)}

        return await answer(request, "zeroshot", work)

    @app.post("/caption")
    async def caption(request: Request) -> dict[str, Any]:
        def work(inputs: Inputs) -> Any:
            image = inputs.need_image("caption")
            return lambda: {"caption": predictor.caption(image)}

        return await answer(request, "caption", work)

    @app.post("/vqa")
    async def vqa(request: Request) -> dict[str, Any]:
        def work(inputs: Inputs) -> Any:
            image, question = inputs.need_image("vqa"), inputs.text("question")
            return lambda: {"question": question, "answer": predictor.vqa(image, question)}

        return await answer(request, "vqa", work)

    @app.post("/ground")
    async def ground(request: Request) -> dict[str, Any]:
        def work(inputs: Inputs) -> Any:
            image, text = inputs.need_image("ground"), inputs.text("text")

            def call() -> dict[str, Any]:
                box, how = predictor.ground(image, text)
                return {"text": text, "box": box, "width": image.size[0], "height": image.size[1], "method": how}

            return call

        return await answer(request, "ground", work)

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(PAGE / "index.html")

    app.mount("/static", StaticFiles(directory=PAGE), name="static")
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes)
    return app


__all__ = ["Inputs", "build_app", "decode_upload", "read_inputs"]
