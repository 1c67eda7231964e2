"""Hugging Face hub model ids (``org/name``) -> a local folder: the hub cache first, then a download.

``vlp convert openai/clip-vit-base-patch32 OUT`` and ``vlp.create_model(..., pretrained=ID)`` go
through :func:`resolve`. A path that exists is used as it is. Otherwise an ``org/name`` id
(optionally ``hf-hub:org/name`` as OpenCLIP writes it, and ``@revision``) is looked up in the cache
that huggingface_hub and transformers share, without network:

- the cache folder is ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
  ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub`` (huggingface_hub's defaults);
- a model lives in ``models--ORG--NAME/``: ``refs/<revision>`` (``main`` by default) names a commit
  and ``snapshots/<commit>/`` holds its files (a revision may also be the commit itself).

When the id is not cached, it is downloaded with ``huggingface_hub.snapshot_download`` into that
same cache, unless ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set or huggingface_hub is not
installed; the error then lists the paths that were looked at and why nothing was downloaded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# org/name as the hub allows them; an optional OpenCLIP-style "hf-hub:" prefix and "@revision"
MODEL_ID = re.compile(r"^(?:hf-hub:)?([A-Za-z0-9][\w.-]*/[\w.-]+)(?:@([\w./-]+))?$")
TRUE = ("1", "on", "yes", "true")
# what a conversion reads: configs, tokenizers, weights; safetensors first, .bin only when there are none
TEXT_PATTERNS = ["*.json", "*.txt", "*.model"]


def hub_cache() -> Path:
    """The Hugging Face hub cache folder, from the environment as huggingface_hub computes it."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def parse_model_id(text: str) -> tuple[str, str] | None:
    """``(repo_id, revision)`` of ``org/name[@revision]``, or None when ``text`` is not a model id."""
    match = MODEL_ID.match(text)
    if match is None or text.startswith(("./", "../")):
        return None
    return match.group(1), match.group(2) or "main"


def cached_snapshot(repo_id: str, revision: str = "main", cache: Path | None = None) -> tuple[Path | None, list[Path]]:
    """``(snapshot folder or None, the paths looked at)`` for ``repo_id`` in the hub cache."""
    cache = cache if cache is not None else hub_cache()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / revision
    tried = [ref]
    commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit
    tried.append(snapshot)
    return (snapshot if snapshot.is_dir() else None), tried


def model_name(folder: Path) -> str:
    """A folder's model name: the repository's for a cache snapshot (``models--org--NAME/snapshots/<commit>``)."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.name.split("--")[-1]
    return folder.name


def offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _download(repo_id: str, revision: str, cache: Path) -> Path:
    from huggingface_hub import snapshot_download

    folder = Path(
        snapshot_download(
            repo_id, revision=revision, cache_dir=str(cache), allow_patterns=[*TEXT_PATTERNS, "*.safetensors"]
        )
    )
    if not any(folder.glob("*.safetensors")):  # older repositories ship pickled .bin weights only
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=str(cache), allow_patterns=["*.bin"]))
    return folder


def resolve(source: str | Path) -> Path:
    """The local folder or file of ``source``: an existing path, or a hub model id (cache, then download).

    A string that is neither an existing path nor a model id comes back as a path, for the caller's
    own "not found" message. A model id that cannot be found raises :class:`FileNotFoundError`
    naming the cache paths tried and why nothing was downloaded.
    """
    path = Path(source)
    if path.exists() or isinstance(source, Path):
        return path
    parsed = parse_model_id(str(source))
    if parsed is None:
        return path
    repo_id, revision = parsed
    cache = hub_cache()
    snapshot, tried = cached_snapshot(repo_id, revision, cache)
    if snapshot is not None:
        return snapshot
    looked = f"{source}: not a local path, and not in the Hugging Face cache (looked for {', '.join(map(str, tried))})"
    if offline():
        raise FileNotFoundError(f"{looked}; not downloaded: HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set")
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise FileNotFoundError(f"{looked}; not downloaded: huggingface_hub is not installed") from None
    try:
        return _download(repo_id, revision, cache)
    except Exception as err:  # network, authentication, unknown repository: all end the same way for the user
        raise FileNotFoundError(f"{looked}; the download into {cache} failed: {type(err).__name__}: {err}") from err
