"""What one request may cost the server: upload bytes, image pixels, time, and how many run at once.

The body limit is enforced while the body streams in (an ASGI middleware counts the bytes), so a
client that lies in ``Content-Length`` or sends a chunked body cannot make the server buffer more
than ``max_upload_bytes``. Pixels are checked from the image header before any pixel is decoded.
Model calls run in worker threads; at most ``max_concurrent`` at a time, the others wait for a slot
until the request's time is up (then 503). A call that outlives ``request_timeout_s`` answers 504;
its slot is held until the thread really finishes, so the bound on concurrent model work stays true.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """Per-request limits of ``vlp serve`` (every one is a command-line option)."""

    max_upload_bytes: int = 10 * 1024 * 1024  # a large phone JPEG is 3-8 MB
    max_pixels: int = 40_000_000  # 40 Mpx: above any phone camera, far below a decompression bomb
    request_timeout_s: float = 60.0
    max_concurrent: int = 2  # model calls at once; more only thrash the CPU threads torch already uses
    max_k: int = 1000  # search results one request may ask for
    max_text_chars: int = 1000  # a query, question or phrase
    max_labels: int = 1000  # zero-shot class names in one request

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_concurrent", "max_k", "max_text_chars", "max_labels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"limits: {name} must be a positive integer, got {value!r}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"limits: request_timeout_s must be > 0, got {self.request_timeout_s!r}")


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx/5xx) and a message that says what to change."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BodyLimit:
    """ASGI middleware: a request body above ``max_bytes`` gets 413 (from ``Content-Length`` at once,
    else as soon as the streamed bytes pass the limit)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_error(send, 413, self._message(int(declared)))
            return
        seen = 0
        started = False

        async def counted_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(seen)
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge as err:
            if not started:
                await _send_error(send, 413, self._message(err.seen, at_least=True))

    def _message(self, size: int, at_least: bool = False) -> str:
        more = "more than " if at_least else ""
        return (
            f"request body is {more}{size} bytes; the limit is {self.max_bytes} bytes "
            "(vlp serve --max-upload-mb); send a smaller image"
        )


class _TooLarge(Exception):
    def __init__(self, seen: int) -> None:
        self.seen = seen


async def _send_error(send: Callable, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Gate:
    """At most ``limit`` model calls at once, each in a worker thread, each within a deadline."""

    def __init__(self, limit: int, timeout_s: float) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self._slots = threading.BoundedSemaphore(limit)
        self._pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="vlp-serve")
        self._count = threading.Lock()
        self.running = 0  # model calls now in their threads (for /health)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread once a slot is free; 503 when no slot frees in time, 504 when
        the call itself runs past the deadline (it finishes in the background, holding its slot)."""
        deadline = time.monotonic() + self.timeout_s
        loop = asyncio.get_running_loop()
        # wait for a slot in short polls so the event loop (other requests, /health) keeps running
        while not self._slots.acquire(blocking=False):
            if time.monotonic() >= deadline:
                raise RequestError(503, f"server busy: {self.limit} requests already running; retry later")
            await asyncio.sleep(0.005)
        with self._count:
            self.running += 1
        future = loop.run_in_executor(self._pool, self._call, fn, args)
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(deadline - time.monotonic(), 0.001))
        except asyncio.TimeoutError as err:
            raise RequestError(
                504, f"the model took longer than the request time limit ({self.timeout_s:g} s, --request-timeout)"
            ) from err

    def _call(self, fn: Callable[..., T], args: tuple) -> T:
        try:
            return fn(*args)
        finally:
            with self._count:
                self.running -= 1
            self._slots.release()


__all__ = ["BodyLimit", "Gate", "Limits", "RequestError"]
