"""Heads: the registry, BERT's tied prediction head, region heads on a region encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlp import Batch
from vlp.config import ConfigError, from_dict
from vlp.models.config import ModelConfig
from vlp.models.heads import HEADS, HeadContext, build_heads, validate_heads
from vlp.models.model import VisionLanguageModel


def test_registry_validates_names_and_options():
    names = {"itm", "mlm", "mrc", "mrfr", "vqa", "box", "lm", "rank", "region_score", "proposal_score", "tagging"}
    assert set(HEADS) == names
    opts = validate_heads({"itm": {}, "vqa": {"num_answers": 3, "hidden": 10}})
    assert opts["vqa"].num_answers == 3 and opts["vqa"].hidden == 10
    with pytest.raises(
        ConfigError, match=r"model.heads.vqa.num_answer: unknown key; allowed keys: hidden, num_answers"
    ):
        validate_heads({"vqa": {"num_answer": 3}})
    allowed = "box, itm, lm, mlm, mrc, mrfr, proposal_score, rank, region_score, tagging, vqa"
    with pytest.raises(ConfigError, match=f"model.heads.itc: unknown head 'itc'; allowed: {allowed}"):
        validate_heads({"itc": {}})


def test_mlm_head_is_bert_prediction_head_tied_to_word_embeddings():
    torch.manual_seed(0)
    words = torch.nn.Embedding(11, 6)
    heads = build_heads(
        {"mlm": {}, "itm": {}, "vqa": {"num_answers": 4}}, HeadContext(pooled_dim=8, text_dim=8, word_embeddings=words)
    )
    mlm = heads["mlm"]
    assert mlm.decoder.weight is words.weight
    torch.nn.init.normal_(mlm.bias)
    x = torch.randn(2, 3, 8)
    h = F.layer_norm(F.gelu(x @ mlm.dense.weight.T + mlm.dense.bias), (6,), mlm.norm.weight, mlm.norm.bias, 1e-12)
    torch.testing.assert_close(mlm(x), h @ words.weight.T + mlm.bias)
    assert heads["itm"](torch.randn(5, 8)).shape == (5, 2)
    vqa = heads["vqa"]
    assert [type(m).__name__ for m in vqa] == ["Linear", "LayerNorm", "GELU", "Linear"] and vqa[0].out_features == 16
    untied = build_heads({"mlm": {"tie": False}}, HeadContext(text_dim=8, word_embeddings=words))["mlm"]
    assert untied.decoder.weight is not words.weight


def test_region_heads_on_a_single_stream_region_model():
    cfg = from_dict(
        ModelConfig,
        {
            "text": {
                "type": "bert",
                "vocab_size": 40,
                "dim": 16,
                "layers": 0,
                "heads": 2,
                "mlp_dim": 32,
                "max_positions": 16,
            },
            "vision": {"type": "region", "feature_dim": 10, "dim": 16, "heads": 2, "dropout": 0.0},
            "fusion": {"type": "single_stream", "dim": 16, "layers": 1, "heads": 2, "norm_first": False, "eps": 1e-12},
            "heads": {"mrc": {"num_classes": 9}, "mrfr": {}, "itm": {}},
        },
        "model",
    )
    torch.manual_seed(0)
    model = VisionLanguageModel(cfg)
    b = Batch(
        input_ids=torch.randint(5, 40, (2, 4)),
        attention_mask=torch.ones(2, 4, dtype=torch.bool),
        region_features=torch.randn(2, 3, 10),
        region_boxes=torch.tensor([[0.1, 0.1, 0.5, 0.5]]).repeat(2, 3, 1),
        region_mask=torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool),
    )
    out = model(b)
    fused = model.fuse(out.text, out.text_mask, out.image)
    assert model.heads["mrc"](fused.image).shape == (2, 3, 9)
    assert model.heads["mrfr"](fused.image).shape == (2, 3, 10)  # regresses the detector features


def test_heads_are_typed_configs_chosen_by_their_key():
    from vlp.models.heads import HeadConfig, ITMHeadConfig, MLMHeadConfig, VQAHeadConfig
    from vlp.recipe import parse_recipe

    recipe = parse_recipe({"model": {"heads": {"itm": {}, "vqa": {"num_answers": 3}, "mlm": None}}})
    heads = recipe.model.heads
    assert isinstance(heads["itm"], ITMHeadConfig) and isinstance(heads["mlm"], MLMHeadConfig)
    assert isinstance(heads["vqa"], VQAHeadConfig) and heads["vqa"].num_answers == 3 and heads["vqa"].hidden == 0
    assert set(HEADS) == set(HeadConfig.members)  # one registry
    # built in Python: the dict form is read into the same typed configs
    assert isinstance(ModelConfig(heads={"mlm": {"tie": False}}).heads["mlm"], MLMHeadConfig)
    assert ModelConfig(heads={"vqa": VQAHeadConfig(num_answers=2)}).heads["vqa"].num_answers == 2


@pytest.mark.parametrize(
    "heads, message",
    [
        ({"itm": {"bogus": 1}}, "recipe.model.heads.itm.bogus: unknown key; allowed keys: (none)"),
        ({"vqa": {"num_answers": 3, "hiden": 4}}, "recipe.model.heads.vqa.hiden: unknown key; allowed keys: hidden, "
                                                  "num_answers"),  # fmt: skip
        ({"vqa": {}}, "recipe.model.heads.vqa.num_answers: required key is missing"),
        ({"tagging": {"num_classes": 2, "pool": "min"}},
         "recipe.model.heads.tagging.pool: expected one of ['auto', 'first', 'max', 'mean'], got 'min'"),
    ],
)  # fmt: skip
def test_a_head_typo_fails_at_recipe_parse_naming_the_dotted_key(heads, message):
    from vlp.recipe import parse_recipe

    with pytest.raises(ConfigError) as err:
        parse_recipe({"model": {"heads": heads}})
    assert str(err.value) == message
