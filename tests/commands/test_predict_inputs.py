"""vlp.data.inputs: files, folders, globs, manifests and WebDataset shards name the same images; bad inputs
become errors of their own, never a crash, and a command-line input that names nothing is a clear error."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from predict_helpers import draw_photos

from vlp.config import ConfigError
from vlp.data.image_io import ImageError
from vlp.data.inputs import iter_images, list_inputs, read_input


def pixels(found) -> list[bytes]:
    out = []
    for key, image in found:
        assert not isinstance(image, ImageError), (key, image)
        out.append(np.asarray(image).tobytes())
    return out


def write_shard(path: Path, photos: list[Path]) -> Path:
    """An img2dataset-style shard: KEY.png + KEY.txt + KEY.json per sample."""
    with tarfile.open(path, "w") as tar:
        for i, photo in enumerate(photos):
            for suffix, data in ((".png", photo.read_bytes()), (".txt", b"a caption"), (".json", b"{}")):
                info = tarfile.TarInfo(f"{i:09d}{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_folder_glob_manifest_and_shard_enumerate_the_same_images(tmp_path):
    photos = draw_photos(tmp_path / "photos" / "nested", 4)
    (tmp_path / "photos" / "notes.txt").write_text("not an image")  # a folder holds more than images
    (tmp_path / "photos" / ".hidden.png").write_bytes(photos[0].read_bytes())  # hidden files are left out
    expected = [np.asarray(Image.open(p).convert("RGB")).tobytes() for p in photos]

    folder = list(iter_images([tmp_path / "photos"]))
    assert [k for k, _ in folder] == [str(p) for p in photos]
    assert pixels(folder) == expected
    assert pixels(iter_images([f"{tmp_path}/photos/**/*.png"])) == expected
    records = [{"image": f"photos/nested/{p.name}"} for p in photos]  # relative to the manifest's folder
    (tmp_path / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert pixels(iter_images([tmp_path / "list.jsonl"])) == expected
    with (tmp_path / "list.csv").open("w", newline="") as handle:  # OpenCLIP's CSV: tab-separated, filepath column
        writer = csv.writer(handle, delimiter="\t")
        writer.writerows([["filepath", "title"], *[[f"photos/nested/{p.name}", "x"] for p in photos]])
    assert pixels(iter_images([tmp_path / "list.csv"])) == expected
    shard = write_shard(tmp_path / "shard-000.tar", photos)
    from_shard = list(iter_images([shard]))
    assert [k for k, _ in from_shard] == [f"{shard}/{i:09d}.png" for i in range(4)]
    assert pixels(from_shard) == expected
    assert pixels(iter_images([str(tmp_path / "shard-*.tar")])) == expected


def test_each_image_once_in_the_order_given(tmp_path):
    photos = draw_photos(tmp_path / "photos", 3)
    keys = [item.key for item in list_inputs([photos[2], tmp_path / "photos", f"{tmp_path}/photos/*.png"])]
    assert keys == [str(photos[2]), str(photos[0]), str(photos[1])]


def test_bad_entries_become_error_inputs(tmp_path):
    photos = draw_photos(tmp_path, 2)
    manifest = tmp_path / "list.jsonl"
    manifest.write_text('{"image": "photo0.png"}\n{"image": \n{"caption": "no image"}\n{"image": "gone.png"}\n')
    found = list(iter_images([manifest]))
    assert [k for k, _ in found] == [str(photos[0]), f"{manifest}:2", f"{manifest}:3", str(tmp_path / "gone.png")]
    reasons = [image.reason if isinstance(image, ImageError) else "ok" for _, image in found]
    assert reasons == ["ok", "malformed_json", "missing_field", "missing_file"]
    # a shard cut in the middle of its second image: the first image, then one error for the rest
    whole = write_shard(tmp_path / "whole.tar", photos)
    with tarfile.open(whole) as tar:
        second = tar.getmember("000000001.png").offset_data
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[: second + 100])
    items = list_inputs([cut])
    assert [i.key for i in items] == [f"{cut}/000000000.png", str(cut)]
    assert np.asarray(read_input(items[0])).shape[2] == 3
    with pytest.raises(ImageError, match="truncated_shard"):
        read_input(items[1])


@pytest.mark.parametrize(
    "spec, message",
    [("nowhere/a.jpg", "no such file or folder"), ("nowhere/*.jpg", "the glob matches nothing"),
     ("empty", "holds no image files")],
)  # fmt: skip
def test_inputs_that_name_nothing_are_errors(tmp_path, spec, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=message):
        list_inputs([str(tmp_path / spec)])


def test_a_folder_of_shards_says_how_to_pass_them(tmp_path):
    (tmp_path / "shards").mkdir()
    write_shard(tmp_path / "shards" / "000.tar", draw_photos(tmp_path / "p", 1))
    with pytest.raises(ConfigError, match=r"1 \.tar shard\(s\): pass them as .*shards/\*\.tar"):
        list_inputs([tmp_path / "shards"])


def test_an_image_that_fails_preprocessing_is_its_own_error_line_at_any_batch_size():
    from vlp.commands.predict import _run_batch

    def run(images):
        if "bad" in images:
            raise ValueError("too small")
        return [image.upper() for image in images]

    out = _run_batch(run, ["a", "bad", "b"])
    assert out[0] == "A" and out[2] == "B" and isinstance(out[1], ImageError) and str(out[1]) == "bad_image: too small"
    (alone,) = _run_batch(run, ["bad"])
    assert isinstance(alone, ImageError) and str(alone) == "bad_image: too small"
