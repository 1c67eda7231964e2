"""Multi-label tagging: average precision against a hand-worked case and sklearn, the fine-tuning loss
against BCE recomputed from the head by hand, chance levels and mAP recomputed from the raw COCO
instances file, a short fine-tune that lowers the loss and reloads, and ``vlp eval tagging``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

import vlp
from vlp.cli import main
from vlp.config import ConfigError
from vlp.core.outputs import VisualTokens
from vlp.data.batch import Batch
from vlp.data.shapesworld import generate
from vlp.metrics import average_precision
from vlp.metrics.multilabel import multilabel_scores
from vlp.recipe import recipe_dict
from vlp.tasks import tagging
from vlp.tasks.common import load_model, preprocess_images
from vlp.text import Tokenizer
from vlp.train.jobs import build_finetuning_job

RECIPE = Path(vlp.__file__).parent / "tasks" / "recipes" / "tagging-albef-tiny.yaml"
WORDS = ["a red circle", "a blue square shape", "two shapes", "a green star and a cross"]


def read_json(path: Path):
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 60-image 32x32 world (COCO instances + ALBEF captions) and a tokenizer saved beside it."""
    root = tmp_path_factory.mktemp("tagging")
    generate(root / "shapes", images=60, size=32, seed=0, workers=1, formats=("coco", "albef"))
    Tokenizer.train(WORDS * 3, vocab_size=80).save(root / "tok")
    return root / "shapes", root / "tok"


def task_recipe(world: Path, **task) -> dict:
    data = recipe_dict(RECIPE)
    data["data"]["root"] = str(world)
    data["train"].update(batch_size=8, num_workers=0)
    data["task"].update(task)
    return data


# ----------------------------------------------------------------------------- average precision


def test_average_precision_hand_worked_cases():
    # positives at ranks 1, 3, 5: precisions 1/1, 2/3, 3/5
    assert average_precision([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 1]) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # a constant score is one block: precision = prevalence for every positive
    assert average_precision([0.3] * 4, [1, 0, 0, 1]) == pytest.approx(0.5)
    # blocks {0.9}, {0.5, 0.5}, {0.1}: the tied block adds one positive at precision 1/3, the last at 2/4
    assert average_precision([0.9, 0.5, 0.5, 0.1], [0, 1, 0, 1]) == pytest.approx((1 / 3 + 2 / 4) / 2)
    with pytest.raises(ValueError, match="no positive"):
        average_precision([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="expected equal"):
        average_precision([0.1, 0.2], [1])


def test_average_precision_matches_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    for n in (5, 37, 200):
        scores = rng.permutation(n) / n  # distinct: no ties
        targets = rng.random(n) < 0.3
        targets[rng.integers(n)] = True
        assert average_precision(scores, targets) == pytest.approx(average_precision_score(targets, scores))
        coarse = np.round(scores * 4) / 4  # heavy ties: sklearn treats each tie as one block as well
        assert average_precision(coarse, targets) == pytest.approx(average_precision_score(targets, coarse))


def test_tagging_scores_on_a_hand_worked_case():
    probs = torch.tensor([[0.9, 0.2], [0.4, 0.7], [0.6, 0.1], [0.3, 0.3]])
    targets = torch.tensor([[1, 0], [1, 1], [0, 0], [0, 1]]).bool()
    valid = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0]]).bool()  # image 3's class-1 label is ignored
    out = multilabel_scores(probs, targets, valid, ["a", "b"])
    # class a: order 0.9(+) 0.6(-) 0.4(+) 0.3(-): AP = (1 + 2/3) / 2; class b (rows 0-2): 0.7(+) first: AP 1
    assert out["ap"] == pytest.approx({"a": 100 * 5 / 6, "b": 100.0})
    assert out["map"] == pytest.approx(100 * (5 / 6 + 1) / 2)
    # predictions at 0.5: [1,0] [0,1] [1,0] [0,.]: wrong (1,a), (2,a); 5 of 7 valid labels right
    assert out["tag_acc"] == pytest.approx(100 * 5 / 7)
    assert out["exact_match"] == pytest.approx(100 * 2 / 4)
    # chance: prevalence a 2/4, b 1/3; majority a: tie -> absent (2 of 4 right), b: absent (2 of 3 right)
    assert out["chance"]["map"] == pytest.approx(100 * (1 / 2 + 1 / 3) / 2)
    assert out["chance"]["tag_acc"] == pytest.approx(100 * 4 / 7)
    assert out["chance"]["exact_match"] == pytest.approx(100 * 2 / 4)  # images 2 and 3 are all "absent"
    skipped = multilabel_scores(probs, targets & torch.tensor([True, False]), None, ["a", "b"])
    assert skipped["skipped_classes"] == ["b"] and skipped["n_scored_classes"] == 1


# ----------------------------------------------------------------------------- the loss


def test_pool_image_tokens_and_the_embedding_use_the_same_pooling():
    torch.manual_seed(0)
    model = vlp.create_model("clip-tiny").eval()
    tokens = torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    image = VisualTokens(tokens, mask)
    assert torch.equal(model.pool_image_tokens(image, "first"), tokens[:, 0])
    assert torch.allclose(model.pool_image_tokens(image, "mean")[0], tokens[0, :2].mean(0))
    assert torch.equal(model.pool_image_tokens(image, "max")[0], tokens[0, :2].amax(0))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        own = model.image_tokens(images)
        expected = torch.nn.functional.normalize(model.image_proj(own.tokens[:, 0]), dim=-1)  # clip: [CLS]
        assert torch.allclose(model.encode_image(images), expected, atol=1e-6)
        assert torch.equal(model.pool_image_tokens(own), own.tokens[:, 0])


def test_loss_equals_bce_recomputed_by_hand():
    torch.manual_seed(0)
    model = vlp.create_model("clip-tiny")
    tagging.ensure_tagging_head(model, ["circle", "square", "star"], pool="max")
    module = tagging.TaggingClassifier(model, min_area=20.0, image_size=32)
    images = torch.randn(3, 3, 32, 32)
    boxes = torch.zeros(3, 3, 4)
    boxes[0, :2] = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.1, 0.1]])  # 256 px; 10.24 px < 20: small
    boxes[1, :2] = torch.tensor([[0.0, 0.0, 0.1, 0.1], [0.0, 0.0, 0.5, 0.5]])  # small star + large star
    boxes[2, :1] = torch.tensor([[0.2, 0.2, 0.9, 0.9]])
    meta = [
        {"labels": [0, 1], "box_keep": [True, True]},  # circle; square only small -> ignored
        {"labels": [0, 2, 2], "box_keep": [False, True, True]},  # circle cropped away; star present
        {"labels": [1]},  # no box_keep (nothing cropped): square
    ]
    batch = Batch(images=images, region_boxes=boxes, meta=meta)
    loss, logs = module(batch)
    targets = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 1, 0]])
    valid = torch.tensor([[1, 0, 1], [1, 1, 1], [1, 1, 1]]).bool()
    with torch.no_grad():
        pooled = model.vision(images).tokens.amax(dim=1)  # every patch token is kept
        logits = pooled @ model.heads["tagging"].weight.T + model.heads["tagging"].bias
        p = torch.sigmoid(logits)
        bce = -(targets * p.log() + (1 - targets) * (1 - p).log())
    assert loss.item() == pytest.approx(bce[valid].mean().item(), rel=1e-5)
    assert logs["tag_acc"] == pytest.approx(((p > 0.5).float() == targets)[valid].float().mean().item())
    loss.backward()
    assert model.heads["tagging"].weight.grad is not None and model.text_proj.weight.grad is None
    assert model.cfg.heads["tagging"] == {"num_classes": 3, "pool": "max", "class_names": ["circle", "square", "star"]}


# ----------------------------------------------------------------------------- fine-tune, reload, evaluate


def raw_targets(world: Path, split: str) -> tuple[list[str], list[str], torch.Tensor]:
    """(category names in id order, image paths, (N, C) multi-hot) straight from instances_{split}.json."""
    data = read_json(world / "annotations" / f"instances_{split}.json")
    cats = sorted(data["categories"], key=lambda c: c["id"])
    column = {c["id"]: i for i, c in enumerate(cats)}
    paths, rows = [], []
    for image in data["images"]:
        row = torch.zeros(len(cats), dtype=torch.bool)
        for ann in data["annotations"]:
            if ann["image_id"] == image["id"]:
                row[column[ann["category_id"]]] = True
        paths.append(str(world / "images" / split / image["file_name"]))
        rows.append(row)
    return [c["name"] for c in cats], paths, torch.stack(rows)


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """A tagging job of ALBEF-tiny's tower (no init), trained briefly (see train_briefly)."""
    world, tok = world
    # module-scoped fixtures run before the function-scoped one_thread fixture: set one thread here too
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_briefly(world, tok)
    finally:
        torch.set_num_threads(threads)


def train_briefly(world: Path, tok: Path) -> tuple:
    """200 steps of batch 8 (~2 s); (job, loss on one batch before, after, best constant-predictor loss on it)."""
    torch.manual_seed(0)
    job = build_finetuning_job(task_recipe(world), tokenizer=Tokenizer.load(tok))
    probe = next(iter(job.loader))
    # the lowest BCE any image-blind predictor reaches on the probe batch: each class's batch prevalence
    targets, _ = tagging.batch_targets(probe, len(job.recipe["task"]["class_names"]))
    prior = targets.mean(0).clamp(1e-6, 1 - 1e-6)
    constant = -(targets * prior.log() + (1 - targets) * (1 - prior).log()).mean().item()
    with torch.no_grad():
        before = job.module(probe)[0].item()
    opt = torch.optim.AdamW(job.module.parameters(), lr=2e-3, weight_decay=0.05)
    step = 0
    while step < 200:
        for batch in job.loader:
            loss, _ = job.module(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    with torch.no_grad():
        after = job.module(probe)[0].item()
    return job, before, after, constant


def test_finetune_lowers_the_loss_and_the_saved_model_reloads_with_its_head(world, trained, tmp_path):
    world, tok = world
    job, before, after, constant = trained
    # below what any image-blind predictor gets: the tower itself learned (here: fit the training images)
    assert after < before and after < constant - 0.1
    names = [c["name"] for c in read_json(world / "annotations" / "instances_train.json")["categories"]]
    assert job.recipe["task"]["class_names"] == names
    assert job.recipe["model"]["heads"]["tagging"] == {"num_classes": len(names), "pool": "auto", "class_names": names}
    model = job.module.model.eval()
    folder = vlp.save_pretrained(model, tmp_path / "saved", tokenizer=Tokenizer.load(tok))
    loaded = load_model(folder)
    assert torch.equal(loaded.model.heads["tagging"].weight, model.heads["tagging"].weight)
    dataset = build_eval(world, loaded)
    again = tagging.evaluate(loaded.model, loaded.tokenizer, dataset, batch_size=7)
    first = tagging.evaluate(model, loaded.tokenizer, dataset, batch_size=16)
    assert again["map"] == pytest.approx(first["map"]) and again["tag_acc"] == pytest.approx(first["tag_acc"])
    # predict on raw image files: the probabilities above 0.5, the most probable first
    _, paths, _ = raw_targets(world, "test")
    with torch.no_grad():
        probs = torch.sigmoid(tagging.tag_logits(model, preprocess_images(paths[:5], loaded.recipe.data)))
    got = tagging.predict(loaded.model, paths[:5], batch_size=2)
    for row, found in zip(probs.tolist(), got):
        expected = sorted(((names[c], p) for c, p in enumerate(row) if p > 0.5), key=lambda x: -x[1])
        assert [n for n, _ in found] == [n for n, _ in expected]
        assert [p for _, p in found] == pytest.approx([p for _, p in expected], abs=1e-5)


def build_eval(world: Path, loaded):
    from vlp.tasks.common import build_eval_dataset, eval_data_config

    return build_eval_dataset(eval_data_config(loaded.recipe.data, world, "shapesworld", "instances"), "test")


def test_evaluate_equals_a_recomputation_from_the_raw_instances_file(world, trained):
    world, _ = world
    model = trained[0].module.model.eval()
    names, paths, truth = raw_targets(world, "test")
    from vlp.tasks.common import eval_data_config

    config = eval_data_config(model.recipe.data, world, "shapesworld", "instances")
    out = tagging.evaluate(model, None, config, split="test", batch_size=5)
    assert out["class_names"] == names and out["n_images"] == len(paths)
    with torch.no_grad():  # image by image, with the plain eval preprocessing
        probs = torch.cat([torch.sigmoid(tagging.tag_logits(model, preprocess_images([p], config))) for p in paths])
    scored = [c for c in range(len(names)) if truth[:, c].any()]
    assert out["skipped_classes"] == [names[c] for c in range(len(names)) if c not in scored]
    aps = [average_precision_score(truth[:, c].numpy(), probs[:, c].numpy()) for c in scored]
    assert out["map"] == pytest.approx(100 * sum(aps) / len(aps), abs=1e-4)
    assert out["tag_acc"] == pytest.approx(100 * ((probs > 0.5) == truth).double().mean().item())
    assert out["exact_match"] == pytest.approx(100 * ((probs > 0.5) == truth).all(1).double().mean().item())
    prevalence = [truth[:, c].double().mean().item() for c in scored]
    assert out["chance"]["map"] == pytest.approx(100 * sum(prevalence) / len(prevalence))
    majority = sum(max(int(truth[:, c].sum()), len(paths) - int(truth[:, c].sum())) for c in range(len(names)))
    assert out["chance"]["tag_acc"] == pytest.approx(100 * majority / truth.numel())
    # the constant-score predictor really scores the chance mAP
    constant = [average_precision(torch.zeros(len(paths)), truth[:, c]) for c in scored]
    assert out["chance"]["map"] == pytest.approx(100 * sum(constant) / len(constant))


def test_cli_finetune_then_eval_tagging(world, tmp_path, capsys):
    world, tok = world
    run = tmp_path / "run"
    rc = main(["finetune", str(RECIPE), "--tokenizer", str(tok), "--out", str(run), "--steps", "2",
               "--set", f"data.root={world}", "--set", "train.batch_size=8", "--set", "train.num_workers=0",
               "--set", "train.progress=false", "--set", "train.tensorboard=false", "--set", "train.device=cpu",
               "--set", "task.min_area=4"])  # fmt: skip
    assert rc == 0
    out = tmp_path / "eval"
    rc = main(["eval", "tagging", "--model", str(run), "--tokenizer", str(tok), "--split", "val", "--out", str(out),
               "--device", "cpu"])  # fmt: skip
    assert rc == 0
    results = read_json(out / "results.json")
    assert results["task"] == "tagging" and results["settings"]["min_area"] == 4.0  # from the run's task
    names, paths, _ = raw_targets(world, "val")
    assert results["metrics"]["class_names"] == names and results["metrics"]["n_images"] == len(paths)
    loaded = load_model(run, tok)
    from vlp.tasks.common import eval_data_config

    config = eval_data_config(loaded.recipe.data, world, "shapesworld", "instances")
    direct = tagging.evaluate(loaded.model, loaded.tokenizer, config, split="val", min_area=4.0)
    assert results["metrics"]["map"] == pytest.approx(direct["map"])
    assert results["chance"] == pytest.approx(direct["chance"])
    assert "map" in capsys.readouterr().out
    # without --out: the same table, printed only; nothing is written. No --tokenizer either: the
    # run's recipe names the one `vlp finetune --tokenizer` was given
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["eval", "tagging", "--model", str(run), "--split", "val", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "map" in printed and "pass --out DIR" in printed
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "tagging", "--help"])
    assert exit_info.value.code == 0


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("task", "key"),
    [({"pool": "cls"}, "task.pool"), ({"min_area": -1}, "task.min_area"), ({"thresh": 1}, "task.thresh")],
)
def test_bad_task_option_names_the_key(world, task, key):
    world, tok = world
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_finetuning_job(task_recipe(world, **task), tokenizer=Tokenizer.load(tok))


def test_data_without_categories_names_the_format_option(world):
    world, tok = world
    data = task_recipe(world)
    data["data"]["options"] = {"format": "captions"}
    with pytest.raises(ConfigError, match=r"data\.options\.format: instances"):
        build_finetuning_job(data, tokenizer=Tokenizer.load(tok))


def test_pool_first_without_cls_and_evaluate_without_head_are_errors():
    model = vlp.create_model("clip-tiny", **{"model.vision.cls_token": False})
    with pytest.raises(ConfigError, match="task.pool: first"):
        tagging.ensure_tagging_head(model, ["a", "b"], pool="first")
    with pytest.raises(ConfigError, match="no tagging head"):
        tagging.predict(model, [])
    with pytest.raises(ConfigError, match="no tagging head"):
        tagging.evaluate(model, None, [])
