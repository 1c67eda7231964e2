"""``vlp bench taxonomy`` on a stub budget (a few steps, two families), and the latency ranker
against the retrieval task's own full ranking for each scoring mode."""

from __future__ import annotations

import json

import pytest
import torch

import vlp
from vlp.cli import main
from vlp.data.batch import Batch
from vlp.demo.latency import QueryRanker
from vlp.demo.table import TAXONOMY_COLUMNS
from vlp.demo.taxonomy import TaxonomyConfig, run_taxonomy
from vlp.tasks.common import load_model
from vlp.tasks.retrieval import encode, score_matrices
from vlp.text import Tokenizer


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("taxonomy")
    cfg = TaxonomyConfig(images=80, budget_steps=2, finetune_steps=2, batch_size=8, retrieval_images=6,
                         latency_repeats=3, vocab_size=150, families=["vilt-tiny", "clip-tiny"])  # fmt: skip
    before = torch.get_num_threads()
    try:
        summary = run_taxonomy(out, cfg, log=lambda line: None)
    finally:
        torch.set_num_threads(before)
    return out, summary


def test_table_has_every_column_for_both_families(bench):
    out, summary = bench
    rows = {r["model"]: r for r in summary["rows"]}
    assert list(rows) == ["vilt-tiny", "clip-tiny"]
    for row in rows.values():
        for key, _, _ in TAXONOMY_COLUMNS:
            assert isinstance(row[key], float), (row["model"], key)
        assert row["latency_retrieval_ms"] > 0 and row["latency_vqa_ms"] > 0
        assert 0 <= row["vqa"] <= 100 and 0 <= row["refexp"] <= 100
    assert rows["vilt-tiny"]["retrieval_mode"] == "exhaustive" and rows["clip-tiny"]["retrieval_mode"] == "dual"
    assert rows["clip-tiny"]["vqa_head"] == "late fusion MLP" and rows["vilt-tiny"]["vqa_head"] == "fused [CLS]"
    # referring expressions: the fusion model picks one of the image's objects, the dual encoder regresses a box
    assert rows["vilt-tiny"]["refexp_head"] == "candidate-box scores" and "refexp_mark" not in rows["vilt-tiny"]
    assert rows["clip-tiny"]["refexp_mark"].startswith(" (box regression, chance")
    assert summary["chance"]["refexp"] == rows["vilt-tiny"]["refexp_chance"] > rows["clip-tiny"]["refexp_chance"]
    # R@1 is the mean of both directions; RSUM the six recalls; chance from a random ranking of 6 images
    for row in rows.values():
        m = row["retrieval_metrics"]
        assert row["retrieval_r1"] == pytest.approx((m["t2i_r1"] + m["i2t_r1"]) / 2)
        assert row["retrieval_rsum"] == pytest.approx(sum(m[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)))
    # 6 images x 5 captions: text->image 1/6; image->text: 5 of 30 captions are right, so 5/30 at rank 1
    assert summary["chance"]["retrieval_r1"] == pytest.approx((100 / 6 + 100 * 5 / 30) / 2)
    # the parameter count of the saved model, counted here
    model = load_model(out / "runs" / "clip-tiny" / "pretrain", out / "tokenizer").model
    assert rows["clip-tiny"]["params_k"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1000)
    text = (out / "taxonomy.md").read_text()
    assert summary["table"] in text and "vlp bench taxonomy --budget-steps 2" in text
    saved = json.loads((out / "results.json").read_text())
    assert saved["table"] == summary["table"] and len(saved["rows"]) == 2


def _gallery(n: int = 5, size: int = 32):
    torch.manual_seed(1)
    images = torch.randn(n, 3, size, size)
    return [Batch(images=images[:3], image_index=torch.arange(3)),
            Batch(images=images[3:], image_index=torch.arange(3, n))]  # fmt: skip


@pytest.mark.parametrize("recipe,mode", [("clip-tiny", "dual"), ("albef-tiny", "two_stage"), ("vilt-tiny", "auto")])
def test_query_ranker_matches_the_full_ranking(tmp_path, recipe, mode):
    tok = Tokenizer.train(["a red circle.", "two blue squares on a dark background.", "a star."], vocab_size=60)
    torch.manual_seed(0)
    model = vlp.create_model(recipe, **{"model.text.vocab_size": tok.vocab_size}).eval()
    gallery, queries = _gallery(), ["a red circle.", "two blue squares.", "a star."]
    ranker = QueryRanker(model, tok, gallery, mode, k=3, max_text_len=16)
    # the reference: the retrieval task's own score matrices (every text at once), text -> image order
    encoded = encode(model, gallery, queries, tok, mode=ranker.mode, device="cpu", max_text_len=16)
    scores = score_matrices(model, encoded, ranker.mode, k=3).t2i.T
    for q, query in enumerate(queries):
        expected = scores[q].topk(3).indices.tolist()
        assert ranker.rank(query, top=3) == expected, (recipe, query)


def test_bench_cli_rejects_unknown_family(tmp_path, capsys):
    assert main(["bench", "taxonomy", "--out", str(tmp_path), "--families", "gpt-tiny"]) == 2
    assert "gpt-tiny" in capsys.readouterr().err
