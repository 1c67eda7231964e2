"""The web page of `vlp serve` in a real headless Chromium (Debian's `chromium` package, driven by Playwright
through its executable; `playwright install` is never needed): the page loads, a text search fills the grid
with the indexed images in the API's order, and an upload shows the API's caption and answer and draws the
grounded box on the image. Every wait is bounded; the server stops by itself."""

from __future__ import annotations

import os
import shutil

import pytest
from serve_helpers import draw, multipart, png_bytes, request

from vlp.serve.app import build_app
from vlp.serve.gallery import open_gallery
from vlp.serve.predictor import Predictor
from vlp.serve.server import BackgroundServer
from vlp.tasks.common import load_model

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL = "apt-get install -y chromium && pip install playwright (no `playwright install` needed)"


def chromium() -> str | None:
    """The Chromium to drive: ``$VLP_CHROMIUM``, else the first of :data:`CHROMIUM_NAMES` on PATH."""
    explicit = os.environ.get("VLP_CHROMIUM")
    return (
        explicit
        if explicit and os.path.exists(explicit)
        else next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    )


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason=f"Playwright is not installed: {INSTALL}")
    executable = chromium()
    if executable is None:
        pytest.skip(f"no Chromium found (looked for $VLP_CHROMIUM and {', '.join(CHROMIUM_NAMES)}): {INSTALL}")
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: Chromium refuses to start as root (CI here) with its sandbox
        launched = playwright.chromium.launch(executable_path=executable, headless=True, timeout=20_000,
                                              args=["--no-sandbox", "--disable-gpu"])  # fmt: skip
        yield launched
        launched.close()


def test_page_search_grid_and_upload_caption_answer_box(browser, served_files, tmp_path):
    loaded = load_model(served_files["model"])
    predictor = Predictor([("tiny-blip", loaded)], open_gallery(served_files["index"]), num_beams=2)
    picture = tmp_path / "mine.png"
    draw("yellow", "circle", size=64).save(picture)
    with BackgroundServer(build_app(predictor), stop_after=90) as server:
        page = browser.new_page(viewport={"width": 1100, "height": 720})
        page.set_default_timeout(15_000)
        page.goto(server.url + "/", timeout=15_000)
        page.wait_for_function("document.getElementById('models').textContent.includes('8 images indexed')")

        page.fill("#q", "a red circle")
        page.click("#search-btn")
        page.wait_for_function("document.querySelectorAll('#grid figure.result img').length === 8")
        page.wait_for_function("[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth)")
        shown = page.eval_on_selector_all("#grid figcaption", "els => els.map(e => e.textContent.split(' ')[1])")
        status, api = request(server.url + "/search?q=a+red+circle&k=16")
        assert status == 200 and shown == [r["name"] for r in api["results"]]
        assert page.eval_on_selector("#grid img", "i => i.naturalWidth") == 48  # the real file, not a placeholder

        page.fill("#question", "what color is the shape ?")
        page.fill("#phrase", "a yellow circle")
        page.set_input_files("#file", str(picture))
        for element in ("#caption", "#answer", "#box"):
            page.wait_for_function(f"(t => t && t !== '…')(document.querySelector('{element}').textContent)")
        page.wait_for_function("document.getElementById('canvas').dataset.box !== undefined")

        fields = {
            "caption": {},
            "vqa": {"question": "what color is the shape ?"},
            "ground": {"text": "a yellow circle"},
        }
        answers = {}
        for endpoint, form in fields.items():
            status, answers[endpoint] = request(
                server.url + f"/{endpoint}", *multipart(form, png_bytes(draw("yellow", "circle", size=64)))
            )
            assert status == 200, answers[endpoint]
        assert page.text_content("#caption") == (answers["caption"]["caption"] or "(empty caption)")
        assert page.text_content("#answer") == (answers["vqa"]["answer"] or "(empty answer)")
        box = answers["ground"]["box"]
        assert page.eval_on_selector("#canvas", "c => JSON.parse(c.dataset.box)") == box
        # the box is drawn: a pixel on its left edge, halfway down, is the stroke colour
        pixel = page.evaluate(
            """([x1, y1, x2, y2]) => {
                 const c = document.getElementById('canvas'); const s = Number(c.dataset.scale);
                 const x = Math.round(x1 * s), y = Math.round((y1 + y2) / 2 * s);
                 return [...c.getContext('2d').getImageData(x, y, 1, 1).data];
               }""",
            box,
        )
        assert pixel[:3] == [0, 255, 0], pixel
        assert page.is_hidden("#error")
        if os.environ.get("VLP_SCREENSHOT"):
            page.screenshot(path=os.environ["VLP_SCREENSHOT"])
        page.close()
