"""End to end on a tiny ShapesWorld: ``vlp finetune`` a retrieval recipe for a few steps, then
``vlp eval retrieval`` writes results.json whose recalls equal an independent recomputation."""

from __future__ import annotations

import json

import pytest
import torch
from shapes_task_helpers import finetune, make_world, pretrained

import vlp
from vlp.cli import main
from vlp.metrics import retrieval_metrics
from vlp.tasks.common import load_model, preprocess_images

RECALLS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval")
    from shapes_task_helpers import train_tokenizer

    world = make_world(root)
    return world, train_tokenizer(world, root / "tok")


def _val_set(world):
    """Images (paths) and captions of the val split, straight from the annotation file."""
    items = json.loads((world / "annotations" / "captions_val.json").read_text())
    images = [world / item["image"] for item in items]
    texts, txt2img = [], []
    for i, item in enumerate(items):
        texts += item["caption"]
        txt2img += [i] * len(item["caption"])
    return images, texts, txt2img


def _reference_scores(run, world, fused: bool) -> tuple[torch.Tensor, list[int]]:
    """Score every val pair one at a time: embeddings dot product, or the ITM match logit."""
    loaded = load_model(run)
    model, tok = loaded.model, loaded.tokenizer
    images, texts, txt2img = _val_set(world)
    pixels = preprocess_images(images, loaded.recipe.data)
    encoded = [tok([t], max_length=loaded.recipe.data.max_text_len) for t in texts]
    scores = torch.empty(len(images), len(texts))
    with torch.no_grad():
        for i in range(len(images)):
            vis = model.image_tokens(pixels[i : i + 1])
            for t, e in enumerate(encoded):
                mask = e.attention_mask.bool()
                if fused:
                    pooled = model.fuse(model.text_tokens(e.input_ids, mask), mask, vis).pooled
                    scores[i, t] = model.heads["itm"](pooled)[0, 1]
                else:
                    scores[i, t] = model.encode_image(pixels[i : i + 1])[0] @ model.encode_text(e.input_ids, mask)[0]
    return scores, txt2img


def _results(out):
    results = json.loads((out / "results.json").read_text())
    assert {"task", "model", "split", "data", "settings", "metrics", "chance"} <= set(results)
    assert results["task"] == "retrieval" and results["split"] == "val"
    assert set(RECALLS) <= set(results["metrics"]) and set(RECALLS) <= set(results["chance"])
    return results


def test_albef_finetune_then_two_stage_and_exhaustive_eval(world, tmp_path):
    world, tok = world
    init = pretrained("retrieval-albef-tiny", tmp_path / "pre", tok)
    run = finetune("retrieval-albef-tiny", init, world, tmp_path / "run")
    assert (run / "recipe.yaml").is_file()
    common = ["--model", str(run), "--split", "val", "--batch-size", "4"]
    # a shortlist longer than the 30 val captions: two-stage re-ranks every pair, like exhaustive
    assert main(["eval", "retrieval", *common, "--out", str(tmp_path / "two"), "--k", "64"]) == 0
    assert main(["eval", "retrieval", *common, "--out", str(tmp_path / "all"), "--exhaustive"]) == 0
    two, full = _results(tmp_path / "two"), _results(tmp_path / "all")
    assert two["settings"]["mode"] == "two_stage" and full["settings"]["mode"] == "exhaustive"
    scores, txt2img = _reference_scores(run, world, fused=True)
    expected = retrieval_metrics(scores, txt2img)
    for key in RECALLS:
        assert two["metrics"][key] == pytest.approx(expected[key]), key
        assert full["metrics"][key] == pytest.approx(expected[key]), key
    assert full["metrics"]["num_pairs"] == scores.numel()


def test_clip_finetune_then_dual_eval(world, tmp_path):
    world, tok = world
    init = pretrained("retrieval-clip-tiny", tmp_path / "pre", tok)
    run = finetune("retrieval-clip-tiny", init, world, tmp_path / "run")
    out = tmp_path / "eval"
    assert main(["eval", "retrieval", "--model", str(run), "--split", "val", "--out", str(out)]) == 0
    results = _results(out)
    assert results["settings"]["mode"] == "dual"
    scores, txt2img = _reference_scores(run, world, fused=False)
    expected = retrieval_metrics(scores, txt2img)
    for key in RECALLS:
        assert results["metrics"][key] == pytest.approx(expected[key]), key
    # 6 val images with 5 captions each: a random ranking finds an image's caption in its top-1 with p = 5/30
    assert results["chance"]["i2t_r1"] == pytest.approx(100 * 5 / 30)
    assert results["chance"]["t2i_r1"] == pytest.approx(100 / 6)
    # the same split read from the Karpathy-format file (dataset_coco.json layout) scores the same
    karpathy = tmp_path / "karpathy"
    args = ["--data", str(world), "--format", "karpathy", "--set", "paths.annotations=annotations/dataset_shapes.json"]
    code = main(["eval", "retrieval", "--model", str(run), "--split", "val", "--out", str(karpathy), *args])
    assert code == 0
    again = _results(karpathy)
    assert again["data"]["type"] == "karpathy"
    assert {k: again["metrics"][k] for k in RECALLS} == pytest.approx({k: results["metrics"][k] for k in RECALLS})


def test_eval_errors_name_the_problem(world, tmp_path):
    world, tok = world
    assert main(["eval", "retrieval", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    init = pretrained("retrieval-clip-tiny", tmp_path / "pre", tok)
    code = main(["eval", "retrieval", "--model", str(init), "--data", str(world), "--out", str(tmp_path / "o"),
                 "--exhaustive"])  # fmt: skip
    assert code == 2  # a dual encoder has no fusion module to score pairs with


def test_oscar_scores_each_caption_with_the_images_tags(world):
    """Region features + object tags (OSCAR): the text side depends on the image, pair by pair."""
    from vlp.data import build_dataset
    from vlp.data.collate import collate
    from vlp.data.config import DataConfig
    from vlp.tasks import retrieval
    from vlp.text import Tokenizer

    world, tok_dir = world
    tok = Tokenizer.load(tok_dir)
    torch.manual_seed(0)
    model = vlp.create_model("oscar-tiny").eval()
    data = DataConfig(type="shapesworld", root=str(world), image_size=32, max_text_len=24,
                      options={"format": "captions", "regions": True, "load_images": False})  # fmt: skip
    got = retrieval.evaluate(model, tok, data, split="val", batch_size=4, pair_batch_size=7)
    assert got["mode"] == "exhaustive" and got["num_pairs"] == 6 * 30
    dataset = build_dataset(data, "val", tok, train=False)
    scores = torch.empty(len(dataset), len(dataset.texts))
    with torch.no_grad():
        for i in range(len(dataset)):
            sample = dataset[i]
            assert sample["tags"]  # ShapesWorld's oracle detector names every object
            for t, text in enumerate(dataset.texts):
                batch = collate([{**sample, "text": text}], tok, 24)
                ids, mask, types = model.text_inputs(batch)  # caption [SEP] tags [SEP]
                fused = model.fuse(model.text_tokens(ids, mask, types), mask, model.image_tokens(batch))
                scores[i, t] = model.heads["itm"](fused.pooled)[0, 1]
    expected = retrieval_metrics(scores, dataset.txt2img)
    for key in RECALLS:
        assert got[key] == pytest.approx(expected[key]), key
