"""Fixtures of the serve tests: one tiny random BLIP, a folder of drawn images and its embeddings index."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

pytest.importorskip("fastapi", reason="vlp serve needs FastAPI: pip install 'vlp[serve]'")
pytest.importorskip("uvicorn", reason="vlp serve needs uvicorn: pip install 'vlp[serve]'")

from serve_helpers import image_folder, tiny_blip, write_embeddings  # noqa: E402


@pytest.fixture(scope="session")
def served_files(tmp_path_factory) -> dict[str, Path]:
    """``model`` (tiny BLIP folder), ``images`` (8 PNGs), ``index`` (their embeddings), ``secret`` (a file outside
    the images folder), and ``traversal`` (an index whose path list also names the secret: by ``..`` and by a
    symlink inside the images folder)."""
    root = tmp_path_factory.mktemp("serve")
    model = tiny_blip(root / "model")
    paths = image_folder(root / "images")
    write_embeddings(model, paths, root / "index")
    secret = root / "secret.png"  # an image, so only the root check (not the decoder) keeps it out
    secret.write_bytes(paths[0].read_bytes())
    link = root / "images" / "link.png"
    link.symlink_to(secret)
    listed = [str(p) for p in paths] + [str(root / "images" / ".." / "secret.png"), str(link)]
    write_embeddings(model, [*paths, secret, secret], root / "traversal", listed=listed)
    return {"model": model, "images": root / "images", "index": root / "index", "secret": secret,
            "traversal": root / "traversal", "root": root}  # fmt: skip
