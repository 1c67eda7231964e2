"""Helpers of the retrieval / VQA / captioning end-to-end tests: a tiny ShapesWorld, a tokenizer
trained on its text, a pretrained-looking model folder and a few fine-tuning steps via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import vlp
from vlp.cli import main
from vlp.data.shapesworld import generate
from vlp.recipe import recipe_dict
from vlp.text import Tokenizer

TASK_RECIPES = Path(vlp.__file__).parent / "tasks" / "recipes"


def make_world(root: Path, images: int = 60) -> Path:
    """~60 images of 32x32 in the caption (ALBEF and Karpathy), VQAv2 and region formats (about a second)."""
    world = root / "shapes"
    generate(world, images=images, size=32, seed=0, workers=1, formats=("albef", "karpathy", "vqa", "regions"))
    return world


def train_tokenizer(world: Path, out: Path) -> Path:
    """A WordPiece tokenizer on the world's captions, questions and answers, saved to ``out``."""
    ann = world / "annotations"

    def read(name: str):
        return json.loads((ann / name).read_text())

    texts = [c["caption"] for c in read("captions_train.json")]
    texts += [q["question"] for q in read("v2_OpenEnded_shapes_train_questions.json")["questions"]]
    texts += [a["multiple_choice_answer"] for a in read("v2_shapes_train_annotations.json")["annotations"]]
    Tokenizer.train(texts, vocab_size=300).save(out)
    return out


def pretrained(task_recipe: str, out: Path, tokenizer: Path, seed: int = 0) -> Path:
    """A save_pretrained folder of the task recipe's model (random weights stand in for pretraining)."""
    data = recipe_dict(TASK_RECIPES / f"{task_recipe}.yaml")
    data.pop("task")
    data.pop("init", None)
    torch.manual_seed(seed)
    model = vlp.create_model(data)
    return vlp.save_pretrained(model, out, tokenizer=Tokenizer.load(tokenizer))


def finetune(task_recipe: str, init: Path, world: Path, out: Path, steps: int = 2, *extra: str) -> Path:
    """``vlp finetune`` for ``steps`` steps of batch 8 on ``world``; the tokenizer comes from ``init``."""
    rc = main([
        "finetune", str(TASK_RECIPES / f"{task_recipe}.yaml"), "--init", str(init), "--tokenizer", str(init),
        "--out", str(out), "--steps", str(steps), "--set", f"data.root={world}", "--set", "train.batch_size=8",
        "--set", "train.num_workers=0", "--set", "train.progress=false", "--set", "train.tensorboard=false",
        "--set", "train.device=cpu", *extra,
    ])  # fmt: skip
    assert rc == 0
    return out


def manual_greedy(model, tokenizer, prompt: list[int], context, max_new: int) -> str:
    """Greedy decoding of one sequence, step by step, the plain way: the reference for the task code.

    ``context`` is the decoder's cross-attention input for this one sequence (VisualTokens, batch 1).
    [PAD] [CLS] [MASK] and ids beyond the tokenizer are never chosen; [SEP] ends the text.
    """
    tokens = list(prompt)
    banned = {tokenizer.pad_id, tokenizer.cls_id, tokenizer.mask_id}
    with torch.no_grad():
        for _ in range(max_new):
            logits = model.decode(torch.tensor([tokens]), None, context)[0, -1]
            allowed = [i for i in range(tokenizer.vocab_size) if i not in banned]
            best = max(allowed, key=lambda i: float(logits[i]))
            tokens.append(best)
            if best == tokenizer.sep_id:
                break
    return tokenizer.decode(tokens[len(prompt) :]).strip()
