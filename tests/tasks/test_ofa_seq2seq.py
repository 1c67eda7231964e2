"""The OFA-style task end to end: a tokenizer with location tokens from the CLI, a few multitask steps with
``vlp finetune``, ``vlp eval seq2seq``; the task's decoding against a plain step-by-step greedy decoder, the
interleaving of the three tasks, clear errors for a tokenizer without location tokens, and the taxonomy row."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import vlp
from vlp.cli import main
from vlp.config import ConfigError
from vlp.data.shapesworld import generate as generate_world
from vlp.demo.taxonomy import TaxonomyConfig, run_taxonomy
from vlp.objectives.seq2seq import encoder_context
from vlp.tasks.common import build_eval_dataset, image_batch, load_model
from vlp.tasks.decoding import DecodeOptions
from vlp.tasks.seq2seq import build_finetuning, caption, generate_boxes, generate_text, ground
from vlp.tasks.seq2seq.data import MixedTasks, Seq2SeqCollate, instruction, refexp_instruction
from vlp.tasks.seq2seq.evaluate import instruction_batches
from vlp.text import Tokenizer
from vlp.text.locations import add_location_tokens, location_ids

RECIPE = Path(vlp.__file__).parent / "tasks" / "recipes" / "seq2seq-ofa-tiny.yaml"
BINS = 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ofa")
    world = root / "shapes"
    generate_world(world, images=40, size=32, seed=0, workers=1, formats=("albef", "vqa", "refcoco"))
    tok = root / "tok"
    assert main(["tokenizer", "train", "--input", str(world / "annotations" / "captions_train.json"), "--out",
                 str(tok), "--vocab-size", "200", "--location-bins", str(BINS)]) == 0  # fmt: skip
    size = Tokenizer.load(tok).vocab_size
    run = root / "run"
    assert main([
        "finetune", str(RECIPE), "--tokenizer", str(tok), "--out", str(run), "--steps", "3",
        "--set", f"data.root={world}", "--set", "train.batch_size=6", "--set", "train.num_workers=0",
        "--set", "train.progress=false", "--set", "train.tensorboard=false", "--set", "train.device=cpu",
        "--set", f"model.text.vocab_size={size}", "--set", f"model.decoder.vocab_size={size}",
    ]) == 0  # fmt: skip
    return world, tok, run


def manual_greedy(model, tokenizer, batch, allowed: list[int], steps: int, stop: int | None) -> list[list[int]]:
    """Greedy decoding the plain way: the whole prefix through ``model.decode`` at every step, arg-max over
    ``allowed`` ids only; the reference for the task's cached, masked decoding."""
    out = []
    with torch.no_grad():
        context = encoder_context(model, batch.input_ids, batch.attention_mask, model.image_tokens(batch))
        for r in range(len(batch.meta)):
            one = vlp.core.outputs.VisualTokens(context.tokens[r : r + 1], context.mask[r : r + 1])
            tokens = [tokenizer.cls_id]
            for _ in range(steps):
                logits = model.decode(torch.tensor([tokens]), None, one)[0, -1]
                tokens.append(max(allowed, key=lambda i: float(logits[i])))
                if tokens[-1] == stop:
                    break
            out.append(tokens[1:])
    return out


def test_eval_writes_every_task_and_decoding_matches_the_plain_greedy_decoder(trained, tmp_path):
    world, tok, run = trained
    assert main(["eval", "seq2seq", "--model", str(run), "--out", str(tmp_path), "--batch-size", "16"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["metrics"]) == {"caption", "vqa", "refexp"}
    assert 0 <= results["metrics"]["refexp"]["accuracy"] <= 100 and results["metrics"]["vqa"]["n_questions"] > 0
    assert results["metrics"]["caption"]["n_images"] > 0 and "CIDEr" in results["metrics"]["caption"]
    loaded = load_model(run)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    bins = location_ids(tokenizer, BINS).tolist()
    data = vlp.tasks.common.model_data_config(model)
    refs = build_eval_dataset(vlp.tasks.common.eval_data_config(data, None, None, "refcoco"), "test", tokenizer)
    batch = next(instruction_batches(refs, "refexp", tokenizer, 3, data.max_text_len, []))
    boxes = generate_boxes(model, tokenizer, batch, DecodeOptions(strategy="greedy"))
    for box, ids in zip(boxes.tolist(), manual_greedy(model, tokenizer, batch, bins, 4, None)):
        k = [bins.index(i) for i in ids]  # bin k stands for k / (N - 1); corners sorted
        x, y = sorted([k[0], k[2]]), sorted([k[1], k[3]])
        assert box == pytest.approx([x[0] / (BINS - 1), y[0] / (BINS - 1), x[1] / (BINS - 1), y[1] / (BINS - 1)])
    words = [i for i in range(tokenizer.vocab_size) if i not in set(bins) | {0, tokenizer.cls_id, tokenizer.mask_id}]
    texts = generate_text(model, tokenizer, batch, DecodeOptions(strategy="greedy", max_new_tokens=6))
    manual = manual_greedy(model, tokenizer, batch, words, 6, tokenizer.sep_id)
    assert texts == [tokenizer.decode(ids).strip() for ids in manual]


def test_tasks_are_interleaved_in_equal_shares():
    mixed = MixedTasks({"caption": list("abcd"), "vqa": list("xy"), "refexp": list("pqrstu")}, seed=0)
    assert len(mixed) == 3 * 6
    items = [mixed[i] for i in range(len(mixed))]
    assert [t for t, _ in items[:6]] == ["caption", "vqa", "refexp"] * 2
    # every sample of each task within its own cycle: the smaller sets repeat, none is left out
    assert sorted(s for t, s in items if t == "refexp") == list("pqrstu")
    assert sorted(s for t, s in items if t == "vqa") == sorted(list("xy") * 3)
    assert instruction("refexp", {"text": "the red square"}) == 'which region does the text "the red square" describe?'


def test_instructions_keep_the_whole_expression_when_the_tokenizer_spells_the_template_out():
    # a tokenizer trained on expressions alone never saw "which region does the text": it spells the template
    # out piece by piece (as the taxonomy's ShapesWorld tokenizer does), and must not eat the expression's tokens
    expressions = ["the orange object to the left of the large blue object", "the small purple cross", "the box"]
    tok = add_location_tokens(Tokenizer.train(expressions * 5, vocab_size=60), 8)
    long = expressions[0]
    own = tok([long], max_length=4096).attention_mask.sum().item()
    whole = tok([refexp_instruction(long)], max_length=4096)  # the reference: nothing truncated
    whole = whole.input_ids[0][whole.attention_mask[0].bool()].tolist()
    assert len(whole) > own + 10  # the template costs more than ten pieces here
    sample = {"image": torch.zeros(3, 8, 8), "text": long, "target_box": torch.tensor([0.1, 0.2, 0.5, 0.6]),
              "meta": {"index": 0}}  # fmt: skip
    for max_text_len in (own, own + 3):  # the expression alone fits in data.max_text_len
        sb = Seq2SeqCollate(tok, location_ids(tok), max_text_len)([("refexp", sample)])
        assert sb.batch.input_ids[0][sb.batch.attention_mask[0]].tolist() == whole
        batch = next(instruction_batches([sample], "refexp", tok, 1, max_text_len, []))
        assert batch.input_ids[0][batch.attention_mask[0]].tolist() == whole
    # the expression's own budget still holds: a longer one is cut to max_text_len pieces of its own
    cut = Seq2SeqCollate(tok, location_ids(tok), own - 4)([("refexp", sample)]).batch
    assert int(cut.attention_mask.sum()) == len(whole) - 4


def test_a_tokenizer_without_location_tokens_is_a_clear_error(trained):
    world, tok, run = trained
    plain = Tokenizer.train(["a red square", "what color is it"], vocab_size=60)
    model = load_model(run).model
    recipe = vlp.recipe.load_recipe("ofa-tiny")  # the checks come before any data is read
    with pytest.raises(ConfigError, match="add_location_tokens"):
        build_finetuning({"type": "seq2seq"}, recipe, model, plain)
    with_bins = Tokenizer.load(tok)
    small = vlp.recipe.recipe_dict("ofa-tiny")
    small["model"]["text"]["vocab_size"] = small["model"]["decoder"]["vocab_size"] = with_bins.vocab_size - 1
    small = vlp.create_model(small)
    with pytest.raises(ConfigError, match="model.text.vocab_size"):
        build_finetuning({"type": "seq2seq"}, recipe, small, with_bins)
    with pytest.raises(ConfigError, match="task.tasks"):
        build_finetuning({"type": "seq2seq", "tasks": ["retrieval"]}, recipe, model, with_bins)
    # the template comes on top of data.max_text_len: 60 + its pieces overflow ofa-tiny's 64 positions
    recipe.data.max_text_len = 60
    with pytest.raises(ConfigError, match=r"data.max_text_len=60 plus .* model.text.max_positions=64"):
        build_finetuning({"type": "seq2seq"}, recipe, model, with_bins)


def test_taxonomy_row_of_the_unified_family(tmp_path):
    cfg = TaxonomyConfig(images=60, budget_steps=2, finetune_steps=1, batch_size=6, retrieval_images=4,
                         latency_repeats=2, vocab_size=150, location_bins=16, families=["ofa-tiny"])  # fmt: skip
    before = torch.get_num_threads()
    try:
        summary = run_taxonomy(tmp_path, cfg, log=lambda line: None)
    finally:
        torch.set_num_threads(before)
    row = summary["rows"][0]
    assert row["pretrain_steps"] == 2 + 2 * 1  # the others' pretraining + two fine-tunings, as one run
    assert row["retrieval_r1"] is None and "n/a (no retrieval: generation only)" in summary["table"]
    assert 0 <= row["vqa"] <= 100 and 0 <= row["refexp"] <= 100 and row["latency_vqa_ms"] > 0


def test_predict_on_own_images_matches_the_task_decoding(trained):
    world, _, run = trained
    loaded = load_model(run)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    path = sorted((world / "images" / "test").glob("*.png"))[0]
    width, height = Image.open(path).size
    boxes = ground(model, tokenizer, [path], ["the red shape"])
    enc = tokenizer([refexp_instruction("the red shape")], max_length=4096)  # the whole instruction
    batch = image_batch(model, [path]).replace(input_ids=enc.input_ids, attention_mask=enc.attention_mask.bool())
    x0, y0, x1, y1 = generate_boxes(model, tokenizer, batch, DecodeOptions(strategy="greedy"))[0].tolist()
    assert boxes == [pytest.approx([x0 * width, y0 * height, x1 * width, y1 * height])]
    captions = caption(model, tokenizer, [path, path])
    assert len(captions) == 2 and captions[0] == captions[1] and captions[0].strip()  # greedy: one image, one text
    # a centre-crop model sees the middle 32x32 of a 64x32 image (resized short side 32, crop 32): the box
    # comes back shifted by the 16-pixel margin, as evaluation maps it (it used to be stretched over 64 px)
    wide = Image.new("RGB", (64, 32), (40, 40, 40))
    wide.paste(Image.open(path).convert("RGB"), (16, 0))
    data = model.recipe.data
    model.recipe.data = dataclasses.replace(data, transform=dataclasses.replace(data.transform, eval_crop="center"))
    try:
        x0, y0, x1, y1 = generate_boxes(model, tokenizer, batch, DecodeOptions(strategy="greedy"))[0].tolist()
        got = ground(model, tokenizer, [wide], ["the red shape"])[0]
    finally:
        model.recipe.data = data
    assert got == pytest.approx([16 + 32 * x0, 32 * y0, 16 + 32 * x1, 32 * y1], abs=1e-4)
    with pytest.raises(ValueError, match="one text per image"):
        ground(model, tokenizer, [path], ["a", "b"])


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_every_rank_trains_every_task(world_size):
    """Item i is task i % 3: each rank's share holds all three tasks equally, and the ranks split the items."""
    from vlp.tasks.seq2seq.finetune import MixedLoader

    class Interleaved:  # what MixedLoader reads of a MixedTasks: its tasks and its length
        tasks = ["captioning", "vqa", "refexp"]

        def __len__(self) -> int:
            return 72

    shares = [MixedLoader(Interleaved(), None, batch_size=4, rank=r, world_size=world_size).indices
              for r in range(world_size)]  # fmt: skip
    assert sorted(i for share in shares for i in share) == list(range(72))
    for share in shares:
        counts = [sum(1 for i in share if i % 3 == t) for t in range(3)]
        assert counts == [len(share) // 3] * 3, (world_size, counts)
