"""Every ``-tiny`` recipe trains: one step of its whole objective mix reaches every part, and each
of its objectives, trained alone from the recipe's initial model (ITM with hard negatives together
with the ITC that supplies them), overfits one small batch: its loss falls below half its start.

The batch is four rendered ShapesWorld scenes in the Batch format: 32x32 images, the oracle
detector's 64-d region features, boxes and class distributions, object tags, and captions
tokenized by a WordPiece tokenizer trained on those captions. Each image holds one large
object whose shape and colour no other image has (two images add the same small second
object, so that region padding is exercised), and each caption names its objects, so every
pair in the batch is tellable apart, which is what image-text matching has to learn.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import vlp
from vlp import Batch
from vlp.data.config import CLIP_MEAN, CLIP_STD
from vlp.data.shapesworld import COLORS, SHAPES, Background, Scene, SceneObject, region_arrays, render_layers
from vlp.objectives import Pretraining, build_objectives
from vlp.recipe import load_recipe
from vlp.text.tokenizer import Tokenizer

SIZE = 32  # image side of every -tiny recipe
TINY = [name for name in vlp.list_models() if name.endswith("-tiny")]

# The test's optimizer, the same for every recipe: AdamW at a constant learning rate, high enough
# to overfit quickly and low enough for every model to stay stable, with the recipe's gradient
# clipping as the training engine applies it (the recipes' warmup schedules are for real runs).
LR = 1e-3
# Most objectives halve within 10-80 steps. ITM takes longer: its loss first settles at the class
# prior (1 positive : 2 negatives, 0.64 nats, about 95% of its start) and only drops once the
# fusion has learned to compare the two modalities, which from random weights took 55-165 steps
# for these models over three seeds (longest for ALBEF, BLIP and VLMo, whose hard negatives come
# from ITC, trained alongside). ALBEF's distilled objectives are the slowest: its EMA teacher
# (the recipe's decay 0.995, a memory of about 200 steps) starts as the random initial model, and
# although the distillation weight ramps up from 0 over the recipe's first 100 steps, MLM then
# follows the lagging teacher and took 250-280 steps to halve over four seeds (ITC: 23 and 226
# steps for two seeds).
# Training stops as soon as the loss has halved, so the budget only costs time when something is
# wrong.
MAX_STEPS = 400


def scenes(n: int = 4) -> list[Scene]:
    plain = Background("light", "solid", (128, 128, 128), (128, 128, 128), 0.0, 0.0, 0)
    colors = list(COLORS)
    out = []
    for i in range(n):
        objects = [SceneObject(SHAPES[i], colors[i], "large", 0.35, 0.5, 0.26)]
        if i % 2:  # a small second object, the same in both images that have one
            objects.append(SceneObject(SHAPES[n], colors[n], "small", 0.8, 0.22, 0.12))
        out.append(Scene(tuple(objects), plain))
    return out


def caption(scene: Scene) -> str:
    return " and ".join(f"a {o.size} {o.color} {o.shape}" for o in scene.objects) + "."


@pytest.fixture(scope="module")
def data() -> tuple[Tokenizer, Batch]:
    world = scenes()
    captions = [caption(s) for s in world]
    tokenizer = Tokenizer.train(captions, vocab_size=1000)  # the same ids in every process
    text = tokenizer(captions, max_length=24)
    rendered = [render_layers(s, SIZE) for s in world]
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    images = torch.stack([(torch.from_numpy(r.image).permute(2, 0, 1).float() / 255 - mean) / std for r in rendered])
    regions = [region_arrays(s, r) for s, r in zip(world, rendered)]
    n, most = len(world), max(len(a["boxes"]) for a in regions)
    features = torch.zeros(n, most, regions[0]["features"].shape[1])
    boxes = torch.zeros(n, most, 4)
    probs = torch.zeros(n, most, len(SHAPES))
    mask = torch.zeros(n, most, dtype=torch.bool)
    for i, arrays in enumerate(regions):
        k = len(arrays["boxes"])
        features[i, :k] = torch.from_numpy(arrays["features"])
        boxes[i, :k] = torch.from_numpy(arrays["boxes"]) / SIZE  # pixels -> normalized xyxy
        probs[i, :k] = torch.from_numpy(arrays["cls_prob"])
        mask[i, :k] = True
    tags = tokenizer.encode_tags([[str(t) for t in a["tags"]] for a in regions], max_length=8)
    batch = Batch(
        input_ids=text.input_ids,
        attention_mask=text.attention_mask,
        token_type_ids=text.token_type_ids,
        word_ids=text.word_ids,
        images=images,
        region_features=features,
        region_boxes=boxes,
        region_mask=mask,
        region_class_probs=probs,
        tag_ids=tags.input_ids,
        tag_mask=tags.attention_mask,
        image_index=torch.arange(n),
    )
    return tokenizer, batch


def test_the_batch_is_what_the_recipes_read(data) -> None:
    tokenizer, batch = data
    assert batch.images.shape == (4, 3, SIZE, SIZE) and batch.region_features.shape == (4, 2, 64)
    assert batch.region_mask.tolist() == [[True, False], [True, True], [True, False], [True, True]]
    assert ((batch.region_boxes >= 0) & (batch.region_boxes <= 1)).all()
    # the detector's class distribution peaks at each image's own shape
    assert batch.region_class_probs[:, 0].argmax(-1).tolist() == [0, 1, 2, 3]
    words = tokenizer.batch_decode(batch.input_ids)
    assert words[1] == "a large green square and a small purple star."
    assert tokenizer.batch_decode(batch.tag_ids) == ["circle", "square star", "triangle", "diamond star"]
    assert int(batch.input_ids.max()) < 1000  # fits every -tiny vocabulary


def with_dependencies(objectives: dict[str, dict], name: str) -> dict[str, dict]:
    """Objective ``name`` and the ones it cannot learn without: ITM with hard negatives draws them
    from the ITC similarities, so it trains alongside ITC (as in every recipe that uses it)."""
    chosen = {name: objectives[name]}
    if name == "itm" and objectives[name].get("negatives") == "hard" and "itc" in objectives:
        chosen["itc"] = objectives["itc"]
    return chosen


def pretraining(name: str, tokenizer: Tokenizer, only: str | None = None) -> tuple[torch.nn.Module, Pretraining]:
    torch.manual_seed(0)
    model = vlp.create_model(name).train()
    objectives = dict(model.recipe.objectives)
    if only is not None:
        objectives = with_dependencies(objectives, only)
        if getattr(objectives.get("itc"), "queue_size", 0):
            # one batch seen over and over fills ALBEF's queue with copies of its own positives, so the
            # multi-positive target (and the loss's floor) spreads over them: overfit without the queue
            objectives["itc"] = dataclasses.replace(objectives["itc"], queue_size=0)
    # the recipe's own momentum distillation (EMA decay, ramp of the distillation weight), unchanged
    return model, Pretraining(model, build_objectives(objectives, tokenizer=tokenizer))


# every head an objective reads, and the parameters ITC trains
USES = {"itm": ["heads.itm."], "mlm": ["heads.mlm."], "mrc": ["heads.mrc."], "mrfr": ["heads.mrfr."]}
USES.update(lm=["heads.lm.", "decoder."], itc=["text_proj.", "image_proj.", "logit_scale"])
USES.update(siglip=["text_proj.", "image_proj.", "logit_scale", "logit_bias"])
USES.update(seq2seq=["heads.lm.", "decoder.", "fusion."])  # OFA: the encoder is the fusion stack


@pytest.mark.parametrize("name", TINY)
def test_one_step_of_the_recipe_reaches_every_part(name: str, data) -> None:
    tokenizer, batch = data
    model, pt = pretraining(name, tokenizer)
    loss, logs = pt(batch)
    names = list(model.recipe.objectives)
    assert names, f"{name}: the recipe has no objectives"
    for objective in names:
        assert math.isfinite(logs[f"loss_{objective}"]) and logs[f"loss_{objective}"] > 0, (name, objective, logs)
    expected = sum(model.recipe.objectives[o]["weight"] * logs[f"loss_{o}"] for o in names)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    parts = [p for p in ("text", "vision", "fusion", "decoder") if _has_params(getattr(model, p, None))]
    wanted = [f"{p}." for p in parts] + [prefix for o in names for prefix in USES[o]]
    for prefix in wanted:
        assert any(n.startswith(prefix) and g.abs().sum() > 0 for n, g in grads.items()), (
            f"{name}: no gradient in {prefix}"
        )


def _has_params(module: torch.nn.Module | None) -> bool:
    return module is not None and any(True for _ in module.parameters())


def objective_cases() -> list:
    cases = []
    for name in TINY:
        for objective in load_recipe(name).objectives:
            cases.append(pytest.param(name, objective, id=f"{name}-{objective}"))
    return cases


@pytest.mark.parametrize(("name", "objective"), objective_cases())
def test_each_objective_overfits_one_batch(name: str, objective: str, data) -> None:
    tokenizer, batch = data
    model, pt = pretraining(name, tokenizer, only=objective)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    losses: list[float] = []
    for _ in range(MAX_STEPS):
        loss, logs = pt(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if model.recipe.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), model.recipe.optim.grad_clip)
        optimizer.step()
        pt.after_step()
        value = logs[f"loss_{objective}"]
        assert math.isfinite(value), f"{name} {objective}: loss {value} after {len(losses)} steps"
        if value == 0.0 and objective == "mlm":
            continue  # the random mask picked no token this step: there is no MLM loss to record
        losses.append(value)
        start, recent = float(np.mean(losses[:3])), float(np.mean(losses[-5:]))
        if len(losses) >= 8 and recent < 0.5 * start:
            return
    pytest.fail(
        f"{name} {objective}: the loss went from {start:.3f} to {recent:.3f} (mean of the last 5) in "
        f"{MAX_STEPS} steps; expected below half its start"
    )
