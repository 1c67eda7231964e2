"""vlp predict zeroshot / ground / embed on a converted tiny CLIP: probabilities equal a hand computation from
transformers' own CLIPModel (its processor's pixels, its tokenizer's ids), with the user's labels and templates."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from predict_helpers import lines, run_predict

from vlp.io.folders import load_model
from vlp.tasks import perception
from vlp.tasks.zeroshot.head import TEMPLATE_SETS

transformers = pytest.importorskip("transformers")

LABELS = ["red circle", "blue square", "green triangle"]


def reference_probs(hf_folder, photos, templates: list[str]) -> torch.Tensor:
    """``(N, C)`` zero-shot probabilities by hand from transformers: each class's text embeddings over the
    templates, normalised, averaged and renormalised (CLIP's prompt ensembling), scored as CLIP scores."""
    model = transformers.CLIPModel.from_pretrained(hf_folder).eval()
    pixels = transformers.CLIPImageProcessor.from_pretrained(hf_folder)(
        images=[Image.open(p).convert("RGB") for p in photos], return_tensors="pt"
    )["pixel_values"]
    tokenizer = transformers.CLIPTokenizerFast.from_pretrained(hf_folder)
    classes = []
    with torch.no_grad():
        for label in LABELS:
            tok = tokenizer([t.format(label) for t in templates], padding=True, return_tensors="pt")
            out = model(**tok, pixel_values=pixels)  # image_embeds and text_embeds come L2-normalised
            classes.append(torch.nn.functional.normalize(out.text_embeds.mean(0), dim=-1))
        logits = model.logit_scale.exp() * out.image_embeds @ torch.stack(classes).T
    return logits.softmax(dim=-1)


@pytest.mark.parametrize("templates", ["photo", "a {}.|itap of a {}."])
def test_zeroshot_equals_transformers_by_hand(clip_folders, photos, capsys, templates):
    hf, converted = clip_folders
    code, out, _ = run_predict(capsys, "zeroshot", converted, *photos, "--labels", ",".join(LABELS),
                               "--templates", templates, "--top-k", "3", "--batch-size", "2")  # fmt: skip
    assert code == 0
    found = lines(out)
    written = TEMPLATE_SETS[templates] if templates in TEMPLATE_SETS else templates.split("|")
    expected = reference_probs(hf, photos, list(written))
    assert [r["path"] for r in found] == [str(p) for p in photos]
    got = torch.tensor([[next(t["score"] for t in r["top"] if t["label"] == name) for name in LABELS] for r in found])
    assert float((got - expected).abs().max()) < 1e-4
    assert [r["label"] for r in found] == [LABELS[i] for i in expected.argmax(1).tolist()]
    assert float((expected - expected[0]).abs().max()) > 1e-3  # the photos are told apart: a mix-up would show
    assert all([t["score"] for t in r["top"]] == sorted((t["score"] for t in r["top"]), reverse=True) for r in found)


def test_labels_file_and_the_transformers_folder_itself(clip_folders, photos, capsys, tmp_path):
    hf, converted = clip_folders
    (tmp_path / "labels.txt").write_text("# my classes\nred circle\n\nblue square\ngreen triangle\n")
    by_file = run_predict(capsys, "zeroshot", converted, *photos[:2], "--labels-file", tmp_path / "labels.txt")
    by_list = run_predict(capsys, "zeroshot", converted, *photos[:2], "--labels", ",".join(LABELS))
    from_hf = run_predict(capsys, "zeroshot", hf, *photos[:2], "--labels", ",".join(LABELS))  # read as it is
    assert by_file[0] == by_list[0] == from_hf[0] == 0
    assert lines(by_file[1]) == lines(by_list[1])
    assert [r["label"] for r in lines(from_hf[1])] == [r["label"] for r in lines(by_list[1])]
    code, _, err = run_predict(capsys, "zeroshot", converted, photos[0], "--labels", "a,b", "--templates", "a photo")
    assert code == 2 and "'a photo' must contain '{}'" in err


def test_imagenet80_is_clips_published_set():
    """The 80 templates of CLIP's ImageNet prompt-engineering notebook; its 7-template selection is among them."""
    templates = TEMPLATE_SETS["imagenet80"]
    assert len(templates) == len(set(templates)) == 80
    assert all(t.count("{}") == 1 for t in templates)
    assert set(TEMPLATE_SETS["clip7"]) <= set(templates)
    assert templates[0] == "a bad photo of a {}." and templates[-1] == "a tattoo of the {}."
    assert sum(t.startswith("itap of") for t in templates) == 3  # itap of a / the / my


def test_ground_heatmap_box_matches_locate_text(clip_folders, photos, capsys):
    _, converted = clip_folders
    code, out, _ = run_predict(capsys, "ground", converted, *photos[:3], "--text", "red circle")
    assert code == 0
    loaded = load_model(converted)
    for record, photo in zip(lines(out), photos):
        box = perception.locate_text(loaded.model, loaded.tokenizer, photo, "red circle")[0]
        assert record["method"] == "heatmap" and record["box"] == [round(float(v), 2) for v in box]
        width, height = Image.open(photo).size
        x1, y1, x2, y2 = record["box"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height  # pixels of the photo itself


def test_embed_writes_what_encode_image_gives(clip_folders, photos, capsys, tmp_path):
    _, converted = clip_folders
    (photos[0].parent / "photo2a.png").write_text("not a picture")
    out = tmp_path / "emb"
    code, _, err = run_predict(capsys, "embed", converted, photos[0].parent, "--out", out, "--shard-size", "2")
    assert code == 0 and "5 predicted, 1 skipped (not_an_image=1)" in err
    meta = json.loads((out / "meta.json").read_text())
    keys = (out / "paths.txt").read_text().splitlines()
    assert keys == [str(p) for p in photos]
    shards = [np.load(out / s["file"]) for s in meta["shards"]]
    assert [len(s) for s in shards] == [s["count"] for s in meta["shards"]] == [2, 1, 2]  # the bad one left out
    assert meta["dim"] == 16 and meta["count"] == 5 and meta["skipped"][0]["path"].endswith("photo2a.png")
    matrix = np.concatenate(shards)
    assert matrix.dtype == np.float32 and np.allclose(np.linalg.norm(matrix, axis=1), 1, atol=1e-6)
    model = load_model(converted).model
    with torch.no_grad():
        from vlp.tasks.common import image_batch

        expected = model.encode_image(image_batch(model, photos)).numpy()
    assert np.abs(matrix - expected).max() < 1e-6


def test_embed_resumes_by_shard(clip_folders, photos, capsys, tmp_path):
    _, converted = clip_folders
    whole, out = tmp_path / "whole", tmp_path / "out"
    args = ("embed", converted, photos[0].parent, "--shard-size", "2")
    assert run_predict(capsys, *args, "--out", whole)[0] == 0
    assert run_predict(capsys, *args, "--out", out)[0] == 0
    # stopped after writing shard 1's file and paths but before meta.json listed it
    meta = json.loads((out / "meta.json").read_text())
    meta["shards"], meta["count"] = meta["shards"][:1], 2
    (out / "meta.json").write_text(json.dumps(meta))
    (out / "embeddings-00002.npy").unlink()
    code, _, err = run_predict(capsys, *args, "--out", out)
    assert code == 0 and "3 predicted, 0 skipped, 2 already done" in err
    for name in ("paths.txt", "meta.json", "embeddings-00000.npy", "embeddings-00001.npy", "embeddings-00002.npy"):
        mine, theirs = (out / name).read_bytes(), (whole / name).read_bytes()
        assert mine == theirs.replace(str(whole).encode(), str(out).encode()), name
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, _, err = run_predict(capsys, *args, "--out", tmp_path / "mine", "--overwrite")
    assert code == 2 and "not empty" in err and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
