"""The taxonomy benchmark's unified sequence-to-sequence family (OFA): one encoder-decoder trained on
captioning, VQA and referring expressions at once, every answer generated.

It gets the same optimizer steps as the other families in all (their pretraining plus their two
fine-tunings: ``budget_steps + 2 * finetune_steps``), as one multitask run from random weights, on the
same ShapesWorld data, the same tokenizer (plus ``location_bins`` location tokens) and the same uniform
settings. Then, with no task-specific fine-tuning:

- VQA: greedy decoding restricted to the training answers (a trie), official accuracy;
- referring expressions: four location tokens, dequantized; accuracy at IoU >= 0.5, whose chance level is
  the centre box of mean size (a generated box, like CLIP's regressed one, has no candidates to pick from);
- captions: CIDEr of greedy captions (beyond the table's columns, kept in ``results.json``);
- retrieval: none; the model scores no image-text pair, so R@1 and RSUM are marked n/a.

Latency per VQA question is the whole answer: the encoder pass and every decoding step (KV-cached).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import vlp.tasks.seq2seq as s2s
from vlp.demo.latency import median_seconds
from vlp.demo.training import count_parameters, finetune, model_recipe, shapes_data, task_recipe
from vlp.tasks.common import build_eval_dataset
from vlp.tasks.decoding import DecodeOptions
from vlp.tasks.seq2seq.data import SHAPES_FORMATS
from vlp.tasks.seq2seq.decode import answer_trie
from vlp.tasks.seq2seq.evaluate import instruction_batches
from vlp.tasks.vqa.head import dataset_vocab
from vlp.text.locations import add_location_tokens

NO_RETRIEVAL = " n/a (no retrieval: generation only)"


def is_seq2seq(recipe: dict[str, Any]) -> bool:
    """True for a recipe trained with OFA's seq2seq objective (the unified family)."""
    return "seq2seq" in (recipe.get("objectives") or {})


def measure_seq2seq(fam: Any, world: Path, tokenizer: Any, cfg: Any, runs: Path, overrides: dict[str, Any],
                    log: Any = print) -> dict[str, Any]:  # fmt: skip
    """Train the family's recipe on the three tasks at once, then score VQA, referring expressions and captions."""
    out = runs / fam.recipe
    tok = add_location_tokens(tokenizer, cfg.location_bins)
    tok.save(out / "tokenizer")
    steps = cfg.budget_steps + 2 * cfg.finetune_steps
    base = model_recipe(fam.recipe, world, tok, {**overrides, "train.steps": steps,
                                                 "schedule.warmup_steps": max(1, min(100, steps // 10))})  # fmt: skip
    base.setdefault("model", {})["tokenizer"] = str((out / "tokenizer").resolve())
    model, _, result = finetune(task_recipe(base, {"type": "seq2seq"}, {}), None, tok, out / "seq2seq")
    row: dict[str, Any] = {
        "family": fam.family, "model": fam.recipe, "input": fam.input, "objectives": ["seq2seq"],
        "params_k": count_parameters(model) / 1000, "pretrain_loss": result.loss, "pretrain_s": result.seconds,
        "pretrain_steps": steps, "location_bins": cfg.location_bins,
        "retrieval_r1": None, "retrieval_rsum": None, "retrieval_mode": "none",
        "retrieval_r1_mark": NO_RETRIEVAL, "retrieval_rsum_mark": NO_RETRIEVAL,
    }  # fmt: skip
    log(f"    trained on captions + VQA + refexp for {steps} steps in {result.seconds:.0f} s, final loss "
        f"{result.loss:.3f}; {row['params_k']:.1f}k parameters")  # fmt: skip
    greedy = DecodeOptions(strategy="greedy")
    data = shapes_data(model, "captions")
    scores = s2s.evaluate(model, tok, data, split="test", options=greedy)
    vqa, ref, cap = scores["vqa"], scores["refexp"], scores["caption"]
    chance = ref["chance"]["accuracy"]
    row.update({
        "vqa": vqa["overall"], "vqa_chance": vqa["chance"]["overall"], "vqa_per_answer_type": vqa["per_answer_type"],
        "vqa_head": "decoder, answers restricted to the training answers",
        "refexp": ref["accuracy"], "refexp_miou": ref["miou"], "refexp_chance": chance,
        "refexp_head": "4 location tokens", "refexp_mark": f" (box tokens, chance {chance:.0f})",
        "caption_cider": cap["CIDEr"], "caption_bleu4": cap["Bleu_4"],
    })  # fmt: skip
    log(f"    VQA (generated): {row['vqa']:.1f}; referring expressions (location tokens): acc@0.5 {row['refexp']:.1f}; "
        f"captions: CIDEr {row['caption_cider']:.1f}")  # fmt: skip
    vqa_data = shapes_data(model, SHAPES_FORMATS["vqa"])
    trie = answer_trie(tok, dataset_vocab(build_eval_dataset(vqa_data, "train", tok)))  # built once, not timed
    questions = build_eval_dataset(vqa_data, "test", tok)
    samples = list(instruction_batches(questions, "vqa", tok, 1, vqa_data.max_text_len, []))[: cfg.latency_repeats]
    position = iter(range(10**9))

    def one() -> None:
        s2s.generate(model, tok, s2s.encode(model, samples[next(position) % len(samples)]), greedy, trie=trie)

    row["latency_vqa_ms"] = 1000 * median_seconds(one, repeats=cfg.latency_repeats, warmup=3)
    log(f"    {row['latency_vqa_ms']:.2f} ms/question (encoder + every decoding step)")
    return row


__all__ = ["NO_RETRIEVAL", "is_seq2seq", "measure_seq2seq"]
