"""End to end on a tiny ShapesWorld: ``vlp eval zeroshot`` of a CLIP-tiny model equals top-1/top-5
recomputed from the raw instances file with per-image, per-prompt encoding; ``vlp finetune
zeroshot-clip-tiny`` runs and its class vocabulary is used by the evaluation."""

from __future__ import annotations

import pytest
import torch
from grounding_helpers import make_world, read_json, train_tokenizer
from shapes_task_helpers import finetune, pretrained

from vlp.cli import main
from vlp.tasks.common import load_model, preprocess_images
from vlp.tasks.zeroshot import TEMPLATE_SETS


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("zeroshot")
    world = make_world(root)
    tok = train_tokenizer(world, root / "tok")
    return world, tok, pretrained("zeroshot-clip-tiny", root / "pre", tok)


def main_object_labels(world, split: str, by: str) -> list[tuple[str, str]]:
    """(image file, class name of its biggest object) from the raw COCO instances file."""
    data = read_json(world / "annotations" / f"instances_{split}.json")
    names = {c["id"]: c["name"] for c in data["categories"]}
    out = []
    for image in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        if anns:
            main = max(anns, key=lambda a: a["bbox"][2] * a["bbox"][3])
            shape, color = names[main["category_id"]], main["attributes"]["color"]
            label = shape if by == "shape" else color if by == "color" else f"{color} {shape}"
            out.append((str(world / "images" / split / image["file_name"]), label))
    return out


def test_zero_shot_accuracy_equals_a_recomputation_from_the_raw_files(world, tmp_path):
    world, _, init = world
    out = tmp_path / "eval"
    rc = main(["eval", "zeroshot", "--model", str(init), "--data", str(world), "--split", "val", "--by", "color",
               "--templates", "shapes", "--out", str(out), "--batch-size", "4"])  # fmt: skip
    assert rc == 0
    results = read_json(out / "results.json")
    metrics = results["metrics"]
    colors = list(read_json(world / "meta.json")["colors"])
    assert metrics["class_names"] == colors and results["settings"]["templates"] == list(TEMPLATE_SETS["shapes"])
    expected = main_object_labels(world, "val", "color")
    assert metrics["n_images"] == len(expected)
    loaded = load_model(init)
    model, tok = loaded.model, loaded.tokenizer
    with torch.no_grad():
        classes = []
        for color in colors:  # one prompt at a time, then the plain mean of unit vectors
            rows = [model.encode_text(tok([t.format(color)]).input_ids) for t in TEMPLATE_SETS["shapes"]]
            mean = torch.cat(rows).mean(0)
            classes.append(mean / mean.norm())
        images = model.encode_image(preprocess_images([path for path, _ in expected], loaded.recipe.data))
        sims = images @ torch.stack(classes).T
    truth = torch.tensor([colors.index(label) for _, label in expected])
    rank = (sims > sims.gather(1, truth[:, None])).sum(1)
    assert metrics["top1"] == pytest.approx(100 * (rank < 1).double().mean().item())
    assert metrics["top5"] == pytest.approx(100 * (rank < 5).double().mean().item())
    assert results["chance"]["top1"] == pytest.approx(100 / len(colors))


def test_finetune_then_eval_uses_the_saved_class_vocabulary(world, tmp_path):
    world, _, init = world
    run = finetune("zeroshot-clip-tiny", init, world, tmp_path / "run")
    task = load_model(run).task
    assert task["class_names"] == [c["name"] for c in read_json(world / "meta.json")["categories"]]
    out = tmp_path / "eval"
    assert main(["eval", "zeroshot", "--model", str(run), "--split", "holdout", "--out", str(out)]) == 0
    metrics = read_json(out / "results.json")["metrics"]
    assert metrics["class_names"] == task["class_names"]
    assert metrics["n_images"] == len(main_object_labels(world, "holdout", "shape"))
    out2 = tmp_path / "pairs"
    assert main(["eval", "zeroshot", "--model", str(run), "--split", "holdout", "--by", "color_shape",
                 "--templates", "a {}.", "--out", str(out2)]) == 0  # fmt: skip
    assert read_json(out2 / "results.json")["metrics"]["n_classes"] == 6 * 7
