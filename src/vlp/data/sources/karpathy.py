"""Karpathy-split caption files: ``dataset_coco.json``, ``dataset_flickr30k.json``, ``dataset_f8k.json``.

Layout: ``{"dataset": ..., "images": [{"filepath": "val2014" (COCO only),
"filename": ..., "imgid", "cocoid" (COCO only), "split": "train" | "restval" |
"val" | "test", "sentences": [{"raw", "tokens", ...}]}]}``. The image is
``images_dir / filepath / filename``. Asking for ``train`` also takes
``restval`` when ``restval`` is on (the usual 113k-image COCO training set).
"""

from __future__ import annotations

from pathlib import Path

from vlp.data.skipping import Skipped, reject
from vlp.data.sources.common import CaptionMode, ImageCaptions, SourceIndex, expect, group_captions, read_json


def read_karpathy(
    annotations: Path,
    images_dir: Path,
    split: str,
    mode: CaptionMode = "pairs",
    restval: bool = True,
    max_chars: int = 2000,
    strict: bool = False,
) -> SourceIndex:
    """Index the images of ``split`` in a Karpathy-split JSON file."""
    data = read_json(annotations, "annotations")
    expect(
        isinstance(data, dict) and isinstance(data.get("images"), list),
        annotations,
        'expected a Karpathy-split file: {"images": [{"filename", "split", "sentences": [...]}]}',
    )
    wanted = {split, "restval"} if split == "train" and restval else {split}
    skips: list[Skipped] = []
    entries = []
    for i, image in enumerate(data["images"]):
        source = f"{annotations}[images][{i}]"
        if not isinstance(image, dict) or image.get("split") not in wanted:
            continue
        filename = image.get("filename")
        sentences = image.get("sentences")
        if not isinstance(filename, str) or not isinstance(sentences, list):
            skips.append(reject("missing_field", source, "needs 'filename' and a 'sentences' list", strict))
            continue
        captions = []
        for sentence in sentences:
            if isinstance(sentence, dict):
                raw = sentence.get("raw")
                if raw is None and isinstance(sentence.get("tokens"), list):
                    raw = " ".join(str(t) for t in sentence["tokens"])
                captions.append(raw)
            else:
                captions.append(None)
        path = images_dir / image.get("filepath", "") / filename
        image_id = image.get("cocoid", image.get("imgid", Path(filename).stem))
        entries.append(ImageCaptions(str(path), image_id, captions, source))
    index = group_captions(entries, mode, max_chars, strict, skips)
    index.extras["splits_found"] = sorted({str(im.get("split")) for im in data["images"] if isinstance(im, dict)})
    return index
