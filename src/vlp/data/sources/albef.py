"""ALBEF / BLIP caption annotation files (``coco_karpathy_train.json``, ``flickr30k_test.json``, ...).

Layout: a JSON list. Training files have one entry per caption,
``{"image": "val2014/COCO_val2014_000000522418.jpg", "caption": str,
"image_id": "coco_522418"}``; evaluation files one entry per image,
``{"image": ..., "caption": [str, ...]}``; pretraining files may hold either
form. The image is ``images_dir / image``. Entries of the same image are merged,
so the same reader serves training pairs and retrieval evaluation.
"""

from __future__ import annotations

from pathlib import Path

from vlp.data.skipping import Skipped, reject
from vlp.data.sources.common import CaptionMode, ImageCaptions, SourceIndex, expect, group_captions, read_json


def read_albef(
    annotations: Path, images_dir: Path, mode: CaptionMode = "pairs", max_chars: int = 2000, strict: bool = False
) -> SourceIndex:
    """Index an ALBEF/BLIP caption JSON list."""
    data = read_json(annotations, "annotations")
    expect(
        isinstance(data, list),
        annotations,
        'expected an ALBEF/BLIP caption list: [{"image": path, "caption": str or [str, ...]}]',
    )
    skips: list[Skipped] = []
    entries = []
    for i, entry in enumerate(data):
        source = f"{annotations}[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            skips.append(reject("missing_field", source, "needs an 'image' path", strict))
            continue
        caption = entry.get("caption")
        captions = caption if isinstance(caption, list) else [caption]
        image_id = entry.get("image_id", Path(entry["image"]).stem)
        entries.append(ImageCaptions(str(images_dir / entry["image"]), image_id, captions, source))
    return group_captions(entries, mode, max_chars, strict, skips)
