"""``vlp predict`` reads a manifest with the manifest loader's own reader: the same images, in file order, and
the same reason (and source line) for every record it cannot use -- captions are not needed for predicting."""

from __future__ import annotations

from pathlib import Path

from vlp.data.inputs import list_inputs
from vlp.data.sources.manifest import read_manifest


def _loader_view(manifest: Path) -> tuple[list[str], dict[str, str]]:
    index = read_manifest(manifest, manifest.parent, mode="pairs", split="all")
    return [r["image"] for r in index.records], {s.source: s.reason for s in index.skips}


def _inputs_view(manifest: Path) -> tuple[list[str], dict[str, str]]:
    items = list_inputs([manifest])
    return [i.key for i in items if i.error is None], {i.key: i.error.split(":")[0] for i in items if i.error}


def test_jsonl_manifest_gives_the_loaders_images_and_reasons(tmp_path):
    manifest = tmp_path / "list.jsonl"
    lines = [
        b'{"image": "a.png", "caption": "a"}',
        b'{"image": ',  # malformed_json
        b'["not", "an", "object"]',  # bad_record
        b'{"caption": "no image"}',  # missing_field
        b"",  # blank lines are not records
        b'{"image": "caf\xe9.png", "caption": "latin-1"}',  # bad_encoding
        b'{"file_name": "sub/b.png", "text": "b"}',
        b'{"image": "", "filepath": "c.png", "caption": "c"}',  # the first non-empty image key
    ]
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    images, reasons = _loader_view(manifest)
    assert images == [str(tmp_path / "a.png"), str(tmp_path / "sub/b.png"), str(tmp_path / "c.png")]
    expected = {f"{manifest}:2": "malformed_json", f"{manifest}:3": "bad_record", f"{manifest}:4": "missing_field",
                f"{manifest}:6": "bad_encoding"}  # fmt: skip
    assert reasons == expected
    assert _inputs_view(manifest) == (images, expected)


def test_csv_manifest_gives_the_loaders_images_and_reasons(tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("filepath;title\na.png;a\n;no image\nb.png;b;extra cell\nc.png;c\n", encoding="utf-8")
    images, reasons = _loader_view(manifest)
    assert images == [str(tmp_path / "a.png"), str(tmp_path / "c.png")]
    expected = {f"{manifest}:3": "missing_field", f"{manifest}:4": "bad_record"}
    assert reasons == expected
    assert _inputs_view(manifest) == (images, expected)
