"""Bottom-up-attention ``.npz`` region files: key spellings, errors, padding into a Batch."""

import numpy as np
import pytest
import torch

from vlp.data.batch import Batch
from vlp.vision import RegionConfig, RegionEncoder, RegionFeatures, load_region_npz, pad_regions

FEATURES = np.arange(15, dtype=np.float32).reshape(3, 5)
BOXES = np.array([[0, 0, 100, 50], [20, 10, 60, 40], [50, 25, 200, 100]], dtype=np.float32)


def test_plain_spelling(tmp_path):
    path = tmp_path / "a.npz"
    probs = np.full((3, 5), 0.2, dtype=np.float32)
    np.savez(
        path,
        features=FEATURES,
        boxes=BOXES,
        image_w=200,
        image_h=100,
        num_boxes=3,
        cls_prob=probs,
        objects_id=np.array([4, 1, 2]),
        objects_conf=np.array([0.9, 0.8, 0.5]),
    )
    regions = load_region_npz(path)
    assert regions.num_boxes == 3 and not regions.normalized
    torch.testing.assert_close(regions.features, torch.from_numpy(FEATURES))
    assert regions.class_ids.tolist() == [4, 1, 2]
    torch.testing.assert_close(regions.class_probs, torch.from_numpy(probs))
    # box (20, 10, 60, 40) of a 200 x 100 image
    torch.testing.assert_close(regions.normalized_boxes()[1], torch.tensor([0.1, 0.1, 0.3, 0.4]))


def test_bottom_up_attention_spelling(tmp_path):
    # bottom-up-attention.pytorch: x, bbox, num_bbox, and class fields inside a pickled info dict;
    # here x is stored (F, R) and padded to 4 rows of which num_bbox = 2 are real
    path = tmp_path / "b.npz"
    padded_boxes = np.concatenate([BOXES, np.zeros((1, 4), np.float32)])
    padded_features = np.concatenate([FEATURES, np.zeros((1, 5), np.float32)]).T.copy()
    info = np.array({"objects_id": np.array([7, 8, 0, 0]), "objects_conf": np.array([0.5, 0.4, 0, 0])}, dtype=object)
    np.savez(path, x=padded_features, bbox=padded_boxes, num_bbox=2, image_w=200, image_h=100, info=info)
    regions = load_region_npz(path, allow_pickle=True)
    assert regions.num_boxes == 2
    torch.testing.assert_close(regions.features, torch.from_numpy(FEATURES[:2]))
    assert regions.class_ids.tolist() == [7, 8]
    torch.testing.assert_close(regions.class_scores, torch.tensor([0.5, 0.4]))
    # without allow_pickle the numeric fields still load; the pickled class fields are skipped
    plain = load_region_npz(path)
    assert plain.num_boxes == 2 and plain.class_ids is None


def test_missing_keys_name_file_and_key(tmp_path):
    path = tmp_path / "nobox.npz"
    np.savez(path, features=FEATURES, image_w=200, image_h=100)
    with pytest.raises(KeyError, match=r"nobox\.npz.*'boxes', 'bbox'"):
        load_region_npz(path)
    path = tmp_path / "nosize.npz"
    np.savez(path, features=FEATURES, boxes=BOXES)
    with pytest.raises(KeyError, match=r"nosize\.npz.*image_w"):
        load_region_npz(path)
    path = tmp_path / "pickled.npz"
    np.savez(path, features=np.array([{"a": 1}], dtype=object), boxes=BOXES, image_w=200, image_h=100)
    with pytest.raises(ValueError, match=r"pickled\.npz.*'features' holds pickled objects"):
        load_region_npz(path)
    path = tmp_path / "mismatch.npz"
    np.savez(path, features=FEATURES[:2], boxes=BOXES, image_w=200, image_h=100)
    with pytest.raises(ValueError, match=r"mismatch\.npz.*do not match 3 boxes"):
        load_region_npz(path)
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        load_region_npz(tmp_path / "absent.npz")


def test_normalized_boxes_need_no_image_size(tmp_path):
    path = tmp_path / "norm.npz"
    np.savez(path, feats=FEATURES, bboxes=BOXES / np.array([200, 100, 200, 100], dtype=np.float32))
    regions = load_region_npz(path)
    assert regions.normalized
    torch.testing.assert_close(regions.normalized_boxes()[2], torch.tensor([0.25, 0.25, 1.0, 1.0]))


def test_pad_regions_feeds_the_encoder():
    a = RegionFeatures(torch.ones(3, 4), torch.tensor(BOXES), 200, 100, class_probs=torch.full((3, 2), 0.5))
    b = RegionFeatures(torch.ones(1, 4) * 2, torch.tensor([[0.0, 0.0, 0.5, 0.5]]), normalized=True)
    fields = pad_regions([a, b])
    assert fields["region_features"].shape == (2, 3, 4)
    assert fields["region_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert "region_class_probs" not in fields  # b has none
    torch.testing.assert_close(fields["region_boxes"][1, 0], torch.tensor([0.0, 0.0, 0.5, 0.5]))
    assert pad_regions([a], max_regions=2)["region_class_probs"].shape == (1, 2, 2)
    encoder = RegionEncoder(RegionConfig(feature_dim=4, dim=8, dropout=0.0)).eval()
    out = encoder(Batch(**fields))
    assert out.tokens.shape == (2, 3, 8)
    assert torch.equal(out.tokens[1, 1:], torch.zeros(2, 8))
