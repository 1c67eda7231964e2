"""Fusion parts declare what they do; the model and the tasks ask, never check classes.

A new fusion design defined here, outside vlp, plugs into the model without any edit of
vlp.models or vlp.tasks: the joint [CLS] feeds the ITM head, and the declarations route the
dual-encoder side."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import torch

import vlp
from vlp.config import part
from vlp.core.outputs import FusedOutput, VisualTokens
from vlp.data.batch import Batch
from vlp.fusion import FusionConfig
from vlp.fusion.base import FusionModule
from vlp.tasks.common import has_fusion

SRC = Path(vlp.__file__).parent


class MeanPoolFusion(FusionModule):
    """Toy design: pooled = mean text token + mean image token (no weights)."""

    def __init__(self, cfg: MeanPoolConfig) -> None:
        super().__init__()
        self.text_dim = self.image_dim = self.pooled_dim = cfg.dim

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, image: VisualTokens) -> FusedOutput:
        t = (text * text_mask[..., None]).sum(1) / text_mask.sum(1, keepdim=True)
        v = (image.tokens * image.mask[..., None]).sum(1) / image.mask.sum(1, keepdim=True)
        return FusedOutput(text=text, image=image.tokens, pooled=t + v)


@part(FusionConfig, "test_mean_pool", MeanPoolFusion)
@dataclass
class MeanPoolConfig(FusionConfig):
    dim: int = 32


def test_a_new_fusion_design_needs_no_edit_of_the_model():
    torch.manual_seed(0)
    model = vlp.create_model("vilt-tiny", **{"model.fusion": {"type": "test_mean_pool", "dim": 32}}).eval()
    assert has_fusion(model) and not model.towers_in_fusion
    ids = torch.randint(5, 100, (2, 7))
    images = torch.randn(2, 3, 32, 32)
    text = model.text_tokens(ids)
    image = model.image_tokens(images)
    fused = model.fuse(text, torch.ones(2, 7, dtype=torch.bool), image)
    expected = text.mean(1) + image.tokens.mean(1)  # every token kept
    torch.testing.assert_close(fused.pooled, expected)
    assert model.heads["itm"](fused.pooled).shape == (2, 2)


def test_declarations_of_the_builtin_fusions():
    clip = vlp.create_model("clip-tiny")
    albef = vlp.create_model("albef-tiny")
    blip = vlp.create_model("blip-tiny")
    vlmo = vlp.create_model("vlmo-tiny")
    assert not clip.has_fusion and albef.has_fusion and vlmo.towers_in_fusion and not albef.towers_in_fusion
    # ALBEF: the unimodal text is the layers below fusion; BLIP: the whole stack, fusion restarts at the embeddings
    assert albef.fusion.text_input_layers() == albef.fusion.unimodal_text_layers() == albef.cfg.fusion.from_layer
    assert blip.fusion.text_input_layers() == 0 and blip.fusion.unimodal_text_layers() is None
    batch = Batch(input_ids=torch.randint(5, 100, (2, 6)), attention_mask=torch.ones(2, 6, dtype=torch.bool))
    blip.eval()
    with torch.no_grad():
        whole_stack = blip.text(batch.input_ids, batch.attention_mask, None)
        expected = torch.nn.functional.normalize(
            blip.text_proj(blip.text.pool(whole_stack, batch.input_ids, None)), dim=-1
        )
        torch.testing.assert_close(blip.encode_text(batch.input_ids, batch.attention_mask), expected)


def test_no_isinstance_on_fusion_classes_outside_fusion():
    fusion_classes = {"NoFusion", "MoMEFusion", "TextCrossFusion", "SingleStreamFusion", "CoAttentionFusion"}
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.parent.name == "fusion":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                if names & fusion_classes:
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []
