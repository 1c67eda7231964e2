"""Region files written the way bottom-up-attention extraction scripts write them: tags live in a pickled ``info``."""

from __future__ import annotations

import datetime

import numpy as np
import pytest
from loaders_helpers import tiny_tokenizer, write_png

from vlp.config import from_dict
from vlp.data.config import DataConfig
from vlp.data.loader import build_loader
from vlp.data.sources.regions import RegionError, load_regions


def butd_file(path, ids, info_extra=None, **top) -> None:
    """np.savez as the BUTD scripts call it: x, bbox, num_bbox, image_h, image_w, and info={...}."""
    count = len(ids)
    info = {
        "objects_id": np.array(ids, dtype=np.int64),
        "objects_conf": np.linspace(0.9, 0.5, count).astype(np.float32),
        "attrs_id": np.arange(count, dtype=np.int64) + 10,
        "attrs_conf": np.full(count, 0.25, dtype=np.float32),
        "image_h": 40,
        "image_w": np.int64(80),
        "num_boxes": count,
    } | (info_extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=np.arange(count * 4, dtype=np.float32).reshape(count, 4),
             bbox=np.tile(np.array([[0, 0, 40, 20]], np.float32), (count, 1)), num_bbox=count, image_h=40,
             image_w=80, info=info, **top)  # fmt: skip


def test_objects_and_attributes_are_read_from_the_info_dict(tmp_path) -> None:
    butd_file(tmp_path / "a.npz", [3, 0, 2])
    regions = load_regions(tmp_path / "a.npz")
    assert regions["objects_id"].tolist() == [3, 0, 2] and regions["objects_id"].dtype == np.int64
    np.testing.assert_allclose(regions["objects_conf"], [0.9, 0.7, 0.5], rtol=1e-6)
    assert regions["attrs_id"].tolist() == [10, 11, 12] and regions["attrs_conf"].tolist() == [0.25] * 3
    np.testing.assert_allclose(regions["boxes"], [[0, 0, 0.5, 0.5]] * 3)
    assert load_regions(tmp_path / "a.npz", max_regions=2)["objects_id"].tolist() == [3, 0]
    # a top-level key wins over the info dict
    butd_file(tmp_path / "b.npz", [3, 0, 2], objects_id=np.array([1, 1, 1]))
    assert load_regions(tmp_path / "b.npz")["objects_id"].tolist() == [1, 1, 1]


def test_info_naming_a_python_object_is_refused_not_unpickled(tmp_path) -> None:
    butd_file(tmp_path / "evil.npz", [1], info_extra={"when": datetime.date(2020, 1, 1)})
    with pytest.raises(RegionError, match=r"evil\.npz\[info\]: refused to load datetime\.date") as info:
        load_regions(tmp_path / "evil.npz")
    assert info.value.reason == "bad_regions"
    np.savez(tmp_path / "list.npz", x=np.ones((1, 4)), bbox=np.zeros((1, 4)), image_h=1, image_w=1,
             info=np.array([1, "two"], dtype=object))  # fmt: skip
    with pytest.raises(RegionError, match=r"list\.npz: info \(2,\) holds no dict"):
        load_regions(tmp_path / "list.npz")


def test_butd_region_files_give_oscar_tags(tmp_path) -> None:
    for i in range(3):
        write_png(tmp_path / "images" / f"{i}.png", (80, 40))
        butd_file(tmp_path / "feats" / f"{i}.npz", [i, 2])
    manifest = "\n".join(f'{{"image": "{i}.png", "caption": "photo {i}", "image_id": {i}}}' for i in range(3))
    (tmp_path / "manifest_train.jsonl").write_text(manifest + "\n")
    (tmp_path / "names.txt").write_text("person\ndog\nkite\n")
    config = from_dict(DataConfig, {
        "type": "manifest", "root": str(tmp_path), "image_size": 16,
        "paths": {"images": "images", "regions": "feats"}, "options": {"tag_names": "names.txt"},
    })  # fmt: skip
    loader = build_loader(config, "train", tiny_tokenizer(), batch_size=3, shuffle=False, drop_last=False)
    metas = [m for batch in loader for m in batch.meta]
    assert [m["tags"] for m in metas] == [["person", "kite"], ["dog", "kite"], ["kite", "kite"]]
