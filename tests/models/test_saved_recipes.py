"""Saved recipes stay readable: data/recipe_saved_before_typed_heads.yaml was written by ``vlp.save_pretrained``
(albef-tiny with vqa, box and an explicit mlm head) before heads and objectives became typed configs."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml

import vlp
from vlp.config import to_dict
from vlp.models.heads import BoxHeadConfig, ITMHeadConfig, MLMHeadConfig, VQAHeadConfig
from vlp.objectives import ITCConfig, ITMConfig, MLMConfig
from vlp.recipe import load_recipe

OLD = Path(__file__).parent / "data" / "recipe_saved_before_typed_heads.yaml"


def test_a_recipe_saved_before_typed_heads_loads_typed_and_saves_unchanged():
    recipe = load_recipe(OLD)
    heads, objectives = recipe.model.heads, recipe.objectives
    assert [type(heads[k]) for k in ("itm", "mlm", "vqa", "box")] == [
        ITMHeadConfig, MLMHeadConfig, VQAHeadConfig, BoxHeadConfig
    ]  # fmt: skip
    assert heads["vqa"].num_answers == 5 and heads["mlm"].tie and heads["mlm"].eps == 1e-12
    assert [type(objectives[k]) for k in ("itc", "itm", "mlm")] == [ITCConfig, ITMConfig, MLMConfig]
    assert objectives["itm"].negatives == "hard" and objectives["itc"].distill_warmup_steps == 100

    old = yaml.safe_load(OLD.read_text(encoding="utf-8"))
    new = to_dict(recipe)
    # the sections as YAML text, key order included: heads as written (itm: {}, mlm with its explicit
    # defaults, vqa without hidden), objectives with every option, as they were saved
    dump = lambda data: yaml.safe_dump(data, sort_keys=False)  # noqa: E731
    assert dump(new["model"]["heads"]) == dump(old["model"]["heads"])
    # objectives: every option as it was saved, in its order; options vlp gained since come after, at their defaults
    for name, options in old["objectives"].items():
        saved_back = new["objectives"][name]
        assert dump({k: saved_back[k] for k in options}) == dump(options)
        added = {k: v for k, v in saved_back.items() if k not in options}
        assert list(saved_back)[: len(options)] == list(options)
        assert added == {k: to_dict(type(objectives[name])())[k] for k in added}


def test_a_model_folder_saved_before_typed_heads_still_loads(tmp_path):
    torch.manual_seed(0)
    model = vlp.create_model(OLD).eval()
    folder = vlp.save_pretrained(model, tmp_path / "model")
    shutil.copyfile(OLD, folder / "recipe.yaml")  # the recipe.yaml exactly as the old code wrote it
    loaded = vlp.load(folder)
    assert isinstance(loaded.cfg.heads["vqa"], VQAHeadConfig) and loaded.cfg == model.cfg
    pooled = torch.randn(2, model.fusion.pooled_dim)
    torch.testing.assert_close(loaded.heads["vqa"](pooled), model.heads["vqa"](pooled), rtol=0, atol=0)
    assert loaded.heads["mlm"].decoder.weight is loaded.text.embeddings.word.weight  # still tied
