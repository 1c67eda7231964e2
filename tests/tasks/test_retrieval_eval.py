"""Retrieval evaluation: designed similarities give hand-computed R@K; two-stage equals exhaustive
when the shortlist covers everything; the predict API ranks like per-pair scoring does."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn

import vlp
from vlp.config import ConfigError
from vlp.core.outputs import FusedOutput, ModelOutputs, VisualTokens
from vlp.metrics.retrieval import chance_recall
from vlp.tasks import retrieval
from vlp.text import Tokenizer

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
TXT2IMG = [0, 0, 1, 1, 2, 2, 3, 3]
# dual-encoder similarity (rows: images, columns: texts), designed without ties:
# i2t ranks of the best true caption: 0, 1, 6, 0; t2i ranks of the true image: 1, 2, 1, 2, 2, 1, 0, 3
SIM = torch.tensor([
    [0.90, 0.20, 0.30, 0.10, 0.40, 0.00, 0.50, 0.60],
    [0.80, 0.10, 0.70, 0.20, 0.25, 0.00, 0.40, 0.50],
    [0.95, 0.80, 0.75, 0.60, 0.30, 0.20, 0.45, 0.40],
    [0.10, 0.25, 0.30, 0.40, 0.50, 0.60, 0.65, 0.00],
])  # fmt: skip
# the fusion encoder's match logit: right for every true pair
MATCH = torch.tensor([[2.0 if TXT2IMG[t] == i else -1.0 for t in range(8)] for i in range(4)])


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(WORDS * 3 + ["a small red circle", "two shapes"], vocab_size=120)


class LookupHead(nn.Module):
    """``pooled (P, 2) = (image index, text index)`` -> ITM logits ``(P, 2)`` = ``(0, MATCH[i, t])``."""

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        i, t = pooled.long().unbind(1)
        return torch.stack([torch.zeros(len(i)), MATCH[i, t]], dim=1)


class DesignedModel(nn.Module):
    """A model whose scores are designed: image ``i`` (pixels filled with ``i``) embeds as the one-hot
    e_i, text ``t`` (the word WORDS[t]) as column t of SIM, so the dual similarity is SIM; the
    fusion encoder's ITM logit of (i, t) is MATCH[i, t]."""

    def __init__(self, tokenizer: Tokenizer, fusion: bool = True) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # a device to follow
        self.word_index = {tokenizer.convert_tokens_to_ids([w])[0]: k for k, w in enumerate(WORDS)}
        self.cfg = type("Cfg", (), {"use_tags": False, "name": "designed"})()
        self.text_proj = nn.Identity()  # marks a dual-encoder side
        self.fusion = nn.Identity() if fusion else None
        self.heads = nn.ModuleDict({"itm": LookupHead()} if fusion else {})
        self.fused_pairs = 0

    def forward(self, batch) -> ModelOutputs:
        out = ModelOutputs(model=self)
        if batch.images is not None:
            idx = batch.images[:, 0, 0, 0].round().long()
            out.image = VisualTokens(idx.float()[:, None, None], torch.ones(len(idx), 1, dtype=torch.bool))
            out.image_embed = torch.eye(4)[idx]
        if batch.input_ids is not None:
            idx = torch.tensor([self.word_index[int(i)] for i in batch.input_ids[:, 1]])
            out.text, out.text_mask = idx.float()[:, None, None], torch.ones(len(idx), 1, dtype=torch.bool)
            out.text_embed = SIM.T[idx]
        return out

    def fuse(self, text, text_mask, image) -> FusedOutput:
        self.fused_pairs += text.shape[0]
        pooled = torch.stack([image.tokens[:, 0, 0], text[:, 0, 0]], dim=1)
        return FusedOutput(text=None, image=None, pooled=pooled)


class ImageTexts(torch.utils.data.Dataset):
    """Four images (pixels = index) with two captions each, indexed as retrieval evaluation reads them."""

    texts = WORDS
    txt2img = TXT2IMG
    img2txt = [[0, 1], [2, 3], [4, 5], [6, 7]]

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.full((3, 2, 2), float(i)), "image_index": i, "meta": {"index": i}}


def test_dual_scores_give_hand_computed_recall(tokenizer):
    model = DesignedModel(tokenizer, fusion=False)
    got = retrieval.evaluate(model, tokenizer, ImageTexts(), batch_size=3)  # batches of 3 + 1 images
    assert got["mode"] == "dual" and got["num_pairs"] == 0
    # i2t ranks 0, 1, 6, 0 -> R@1 2/4, R@5 3/4, R@10 4/4; t2i ranks 1,2,1,2,2,1,0,3 -> R@1 1/8, R@5 8/8
    expected = {"i2t_r1": 50.0, "i2t_r5": 75.0, "i2t_r10": 100.0, "t2i_r1": 12.5, "t2i_r5": 100.0, "t2i_r10": 100.0}
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
    assert got["rsum"] == pytest.approx(437.5)
    assert (got["n_images"], got["n_texts"]) == (4, 8)


def test_two_stage_reranks_only_the_shortlist(tokenizer):
    model = DesignedModel(tokenizer)
    got = retrieval.evaluate(model, tokenizer, ImageTexts(), k=2, batch_size=2, pair_batch_size=5)
    assert got["mode"] == "two_stage" and got["k"] == 2
    # image shortlists (top-2 of SIM rows): {0,7} {0,2} {0,1} {6,5}: ITM fixes image 1, image 2's
    # captions are not shortlisted (all -inf: ties count against the truth -> rank 6).
    # text shortlists (top-2 of SIM columns) hold the true image for texts 0, 2, 5, 6 only.
    expected = {"i2t_r1": 75.0, "i2t_r5": 75.0, "i2t_r10": 100.0, "t2i_r1": 50.0, "t2i_r5": 100.0, "t2i_r10": 100.0}
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
    assert got["num_pairs"] == 17 == model.fused_pairs  # 8 + 16 shortlisted pairs, 7 of them in both


def test_two_stage_with_a_full_shortlist_equals_exhaustive(tokenizer):
    model = DesignedModel(tokenizer)
    two = retrieval.evaluate(model, tokenizer, ImageTexts(), k=8)
    full = retrieval.evaluate(model, tokenizer, ImageTexts(), mode="exhaustive")
    assert full["mode"] == "exhaustive" and full["num_pairs"] == 32
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "rsum"):
        assert two[key] == full[key] == (100.0 if key != "rsum" else 600.0)


def test_chance_levels():
    # 2 images x 2 captions: a random top-1 holds one of 2 true captions out of 4 with p = 1/2
    got = chance_recall([[0, 1], [2, 3]], 4, ks=(1, 2))
    assert got["i2t_r1"] == pytest.approx(50.0)
    assert got["i2t_r2"] == pytest.approx(100.0 * (1 - (2 / 4) * (1 / 3)))  # 1 - P(both misses)
    assert got["t2i_r1"] == pytest.approx(50.0) and got["t2i_r2"] == pytest.approx(100.0)


def test_modes_the_model_cannot_run_are_refused(tokenizer):
    with pytest.raises(ConfigError, match="no fusion module"):
        retrieval.evaluate(DesignedModel(tokenizer, fusion=False), tokenizer, ImageTexts(), mode="exhaustive")
    vilt = vlp.create_model("vilt-tiny")
    with pytest.raises(ConfigError, match="no dual-encoder side"):
        retrieval.evaluate(vilt, tokenizer, ImageTexts(), mode="two_stage")


def test_default_objectives_follow_the_model():
    assert retrieval.default_objectives(vlp.create_model("clip-tiny")) == {"itc": {"weight": 1.0}}
    assert set(retrieval.default_objectives(vlp.create_model("albef-tiny"))) == {"itc", "itm"}
    assert retrieval.default_objectives(vlp.create_model("vilt-tiny"))["itm"]["negatives"] == "random"


def _images(n: int) -> list[Image.Image]:
    gen = torch.Generator().manual_seed(3)
    return [Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=gen).byte().numpy()) for _ in range(n)]


def test_retrieve_on_a_real_model_matches_per_pair_scoring(tokenizer):
    torch.manual_seed(0)
    model = vlp.create_model("albef-tiny").eval()
    images = _images(3)
    texts = ["alpha bravo", "a small red circle", "two shapes", "delta", "echo golf"]
    got = retrieval.retrieve(model, tokenizer, images, texts, k=4, rerank_k=8)
    assert got.i2t.shape == (3, 4) and got.t2i.shape == (5, 3)
    # the reference: every pair fused on its own, ITM "match" logit, full ranking
    from vlp.tasks.common import image_batch

    pixels = image_batch(model, images).images
    tok = tokenizer(texts, max_length=24)
    ref = torch.empty(3, 5)
    with torch.no_grad():
        for i in range(3):
            vis = model.image_tokens(pixels[i : i + 1])
            for t in range(5):
                n = int(tok.attention_mask[t].sum())
                ids, mask = tok.input_ids[t : t + 1, :n], tok.attention_mask[t : t + 1, :n].bool()
                fused = model.fuse(model.text_tokens(ids, mask), mask, vis)
                ref[i, t] = model.heads["itm"](fused.pooled)[0, 1]
    assert torch.equal(got.i2t, ref.topk(4, dim=1).indices)
    assert torch.equal(got.t2i, ref.T.topk(3, dim=1).indices)
    torch.testing.assert_close(got.i2t_scores, ref.topk(4, dim=1).values, atol=1e-5, rtol=1e-5)
    # dual mode ranks by the embeddings' dot product
    dual = retrieval.retrieve(model, tokenizer, images, texts, k=2, mode="dual")
    with torch.no_grad():
        sim = model.encode_image(pixels) @ model.encode_text(tok.input_ids, tok.attention_mask.bool()).T
    assert torch.equal(dual.i2t, sim.topk(2, dim=1).indices)


def test_retrieve_refuses_bad_inputs(tokenizer):
    model = vlp.create_model("clip-tiny")
    with pytest.raises(TypeError, match="list of strings"):
        retrieval.retrieve(model, tokenizer, _images(1), "one caption")
    with pytest.raises(ValueError, match="cannot read"):
        retrieval.retrieve(model, tokenizer, ["/nonexistent/image.png"], ["a caption"])
