"""Prompt learning on frozen towers (CoOp, CLIP-Adapter) checked against independent references: context vectors
set to the word embeddings of "a photo of a" give zero-shot's class embeddings; an adapter with alpha 0 is the
frozen model; training leaves the towers untouched and sends gradient to the learned parts only; every method
gets the same shots; ``vlp eval fewshot`` reports what a recomputation from its recorded shots gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vlp
from vlp.cli import main
from vlp.config import ConfigError
from vlp.io.folders import load_model
from vlp.tasks import fewshot, probe, zeroshot
from vlp.tasks.common import model_data_config, preprocess_images
from vlp.text import Tokenizer

NAMES = ["red circle", "blue square", "green triangle", "star"]
COLORS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}  # sorted folder order


def tokenizer() -> Tokenizer:
    words = [f"a photo of a {n}." for n in NAMES + list(COLORS)] + ["x x x x", "a {}.", "itap of a thing"]
    return Tokenizer.train(words * 3, vocab_size=120)


def model_of(recipe: str, seed: int = 0):
    torch.manual_seed(seed)
    return vlp.create_model(recipe).eval()


@pytest.mark.parametrize("recipe", ["clip-tiny", "albef-tiny"])
def test_context_set_to_a_photo_of_a_gives_zero_shot_class_embeddings(recipe):
    model, tok = model_of(recipe), tokenizer()
    with torch.no_grad():
        reference = zeroshot.class_embeddings(model, tok, NAMES, ["a photo of a {}."], 24)
        for csc in (False, True):
            prompts = fewshot.CoOpPrompts(model, tok, NAMES, n_ctx=None, init="a photo of a", class_specific=csc)
            assert prompts.n_ctx == 4 and tuple(prompts.ctx.shape) == ((4, 4, 32) if csc else (4, 32))
            assert torch.allclose(prompts(model), reference, atol=1e-5)
        # random context vectors give other embeddings (the context is really used)
        other = fewshot.CoOpPrompts(model, tok, NAMES, n_ctx=4, generator=torch.Generator().manual_seed(0))
        assert (other(model) - reference).abs().max() > 1e-4  # (random towers: embeddings vary little)


def test_text_embeddings_take_word_vectors_in_place_of_the_lookup():
    model, tok = model_of("clip-tiny"), tokenizer()
    t = tok(["a photo of a star."], max_length=24)
    embeddings = model.text.embeddings
    words = embeddings.word(t.input_ids)
    assert torch.equal(embeddings(t.input_ids, inputs_embeds=words), embeddings(t.input_ids))
    with pytest.raises(ValueError, match=r"inputs_embeds: expected \(1, 8, 32\), got \(1, 3, 32\)"):
        embeddings(t.input_ids, inputs_embeds=words[:, :3])


def test_adapter_with_alpha_zero_is_the_frozen_model():
    features = F.normalize(torch.randn(6, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert torch.allclose(fewshot.ClipAdapter(16, alpha=0.0)(features), features, atol=1e-7)
    # by hand: f' = normalize(alpha * relu(W2 relu(W1 f)) + (1 - alpha) f)
    adapter = fewshot.ClipAdapter(16, reduction=4, alpha=0.2)
    w1, w2 = adapter.fc[0].weight, adapter.fc[2].weight
    hand = F.normalize(0.2 * torch.relu(torch.relu(features @ w1.T) @ w2.T) + 0.8 * features, dim=-1)
    assert torch.allclose(adapter(features), hand, atol=1e-6)
    model, tok = model_of("clip-tiny"), tokenizer()
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "blue", "green")]
    labels, probs = fewshot.classify(model, tok, images, fewshot.ClipAdapter(16, alpha=0.0), NAMES)
    ref_labels, ref_probs = zeroshot.classify(model, tok, images, NAMES)
    assert labels == ref_labels and torch.allclose(probs, ref_probs, atol=1e-6)


def test_coop_prompt_tokens_live_on_the_towers_device_and_move_with_the_context():
    model, tok = model_of("clip-tiny"), tokenizer()
    prompts = fewshot.CoOpPrompts(model, tok, NAMES, n_ctx=4, generator=torch.Generator().manual_seed(0))
    assert not [k for k, v in vars(prompts).items() if isinstance(v, torch.Tensor)]  # all buffers or parameters
    held = dict(prompts.named_buffers()) | dict(prompts.named_parameters())
    assert set(held) == {"input_ids", "attention_mask", "token_type_ids", "ctx"}
    moved = prompts.to(torch.device("meta"), torch.float64)
    assert {name: t.device.type for name, t in moved.named_buffers()} == dict.fromkeys(held.keys() - {"ctx"}, "meta")
    assert moved.ctx.device.type == "meta" and moved.ctx.dtype == torch.float64
    assert moved.input_ids.dtype == torch.int64 and moved.attention_mask.dtype == torch.bool
    # built on a model elsewhere (meta stands in for a GPU; the tokenizer's ids come from the CPU)
    model.to(torch.device("meta"))
    prompts = fewshot.CoOpPrompts(model, tok, NAMES, n_ctx=4, generator=torch.Generator().manual_seed(0))
    held = dict(prompts.named_buffers()) | dict(prompts.named_parameters())
    assert {name: t.device.type for name, t in held.items()} == dict.fromkeys(held, "meta")
    assert tuple(prompts.words(model).shape) == (4, prompts.input_ids.shape[1], 32)  # meta ids, meta lookup


def test_classify_runs_an_adapter_of_another_dtype_in_its_own_dtype():
    model, tok = model_of("clip-tiny"), tokenizer()
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "blue", "green")]
    torch.manual_seed(1)
    adapter = fewshot.ClipAdapter(16, reduction=2, alpha=0.9)
    ref_labels, ref_probs = fewshot.classify(model, tok, images, adapter, NAMES)
    wide = fewshot.ClipAdapter(16, reduction=2, alpha=0.9).double()
    wide.load_state_dict(adapter.state_dict())
    labels, probs = fewshot.classify(model, tok, images, wide, NAMES)  # float32 features, float64 adapter
    assert labels == ref_labels and probs.dtype == torch.float32
    assert torch.allclose(probs, ref_probs, atol=1e-6)
    frozen = zeroshot.classify(model, tok, images, NAMES)[1]
    assert (probs - frozen).abs().max() > 1e-6  # the adapter (alpha 0.9) really changed the answer


def test_coop_training_moves_only_the_context():
    model, tok = model_of("clip-tiny"), tokenizer()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    features = F.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    for csc in (False, True):
        prompts = fewshot.CoOpPrompts(model, tok, NAMES, n_ctx=3, class_specific=csc,
                                      generator=torch.Generator().manual_seed(0))  # fmt: skip
        start = prompts.ctx.detach().clone()
        losses = fewshot.train_coop(model, prompts, features, labels, scale=10.0, steps=30, lr=0.5)
        assert losses[-1] < losses[0]
        assert prompts.ctx.grad is not None and not torch.equal(prompts.ctx, start)
        assert [n for n, p in model.named_parameters() if p.grad is not None] == []
        assert [n for n, p in prompts.named_parameters()] == ["ctx"]
    after = model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags and model.training


def test_adapter_training_moves_only_the_adapter():
    classes = F.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(2)), dim=-1)
    features = F.normalize(torch.randn(9, 16, generator=torch.Generator().manual_seed(3)), dim=-1)
    labels = torch.tensor([0, 1, 2] * 3)
    adapter = fewshot.fit_adapter(classes, features, labels, 10.0, fewshot.FewShotOptions(adapter_steps=40))
    assert all(p.grad is not None for p in adapter.parameters())
    assert not classes.requires_grad and classes.grad is None
    logits = 10.0 * adapter(features) @ classes.T
    assert F.cross_entropy(logits, labels) < F.cross_entropy(10.0 * features @ classes.T, labels)


def test_every_method_gets_the_same_shots(monkeypatch):
    seen: dict[str, list] = {}

    def spy(name):
        def run(ctx, x, y):
            seen.setdefault(name, []).append((x.clone(), y.clone(), ctx["seed"]))
            return torch.zeros(len(test_y), 3)

        return run

    for name in fewshot.METHODS:
        monkeypatch.setitem(fewshot.evaluate.__globals__["METHOD_FUNCTIONS"], name, spy(name))
    train_y = torch.tensor([0] * 7 + [1] * 5 + [2] * 9)
    train_x = torch.arange(len(train_y), dtype=torch.float32)[:, None].repeat(1, 4)
    test_y = torch.tensor([0, 1, 2, 2])
    scores, drawn = fewshot.run_methods({}, (train_x, train_y), test_y, [1, 4, 8], 5, fewshot.METHODS)
    for i, k in enumerate((1, 4, 8)):
        pick = probe.sample_shots(train_y, k, 5)
        assert drawn[str(k)] == pick.tolist()
        for name in fewshot.METHODS:
            x, y, seed = seen[name][i]
            assert torch.equal(x, train_x[pick]) and torch.equal(y, train_y[pick]) and seed == 5
    assert torch.bincount(train_y[drawn["8"]]).tolist() == [7, 5, 8]  # a class with fewer uses all it has
    assert scores["zeroshot"]["1"] == 25.0  # all predicted class 0: one test image of four
    with pytest.raises(ConfigError, match="few-shot methods: lora; allowed: zeroshot, probe, coop"):
        fewshot.run_methods({}, (train_x, train_y), test_y, [1], 0, ["probe", "lora"])


def test_bad_prompt_settings_are_named():
    model, tok = model_of("clip-tiny"), tokenizer()
    with pytest.raises(ConfigError, match="n_ctx=16 but the init phrase 'a photo of a' is 4 tokens"):
        fewshot.CoOpPrompts(model, tok, NAMES, n_ctx=16, init="a photo of a")
    with pytest.raises(ConfigError, match="within the text tower's 64 positions"):
        fewshot.CoOpPrompts(model, tok, [" ".join(["red"] * 70)], n_ctx=4)
    with pytest.raises(ConfigError, match="dual-encoder side"):
        fewshot.CoOpPrompts(model_of("vilt-tiny"), tok, NAMES)


def write_images(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for name, rgb in COLORS.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 60, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")


def test_eval_fewshot_on_an_image_folder_equals_a_recomputation(tmp_path):
    model_dir = vlp.save_pretrained(model_of("clip-tiny", 3), tmp_path / "clip", tokenizer=tokenizer())
    data = tmp_path / "photos"
    write_images(data, 8)
    out = tmp_path / "eval"
    rc = main(["eval", "fewshot", "--model", str(model_dir), "--data", str(data), "--shots", "1,2", "--seed", "3",
               "--methods", "zeroshot,probe,coop,coop_csc,adapter", "--coop-ctx", "4", "--coop-steps", "3",
               "--adapter-steps", "3", "--out", str(out)])  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    metrics = results["metrics"]
    assert list(metrics["accuracy"]) == ["zeroshot", "probe", "coop", "coop_csc", "adapter"]
    assert metrics["class_names"] == list(COLORS) and metrics["n_train"] + metrics["n_test"] == 24
    loaded = load_model(model_dir)
    model, tok, config = loaded.model, loaded.tokenizer, model_data_config(loaded.model)

    def embed(paths):
        with torch.no_grad():
            return torch.cat([model.encode_image(preprocess_images([p], config)) for p in paths])

    everything = {f"{c}/{i}.png" for c in COLORS for i in range(8)}
    assert set(metrics["test_ids"]) < everything and len(metrics["test_ids"]) == metrics["n_test"]
    assert not set(metrics["test_ids"]) & {p for ids in metrics["shots"].values() for p in ids}
    test_paths = [data / p for p in metrics["test_ids"]]
    test_y = torch.tensor([list(COLORS).index(Path(p).parent.name) for p in metrics["test_ids"]])
    test_x = embed(test_paths)
    with torch.no_grad():
        classes = zeroshot.class_embeddings(model, tok, list(COLORS), "photo", config.max_text_len)
    zs = 100.0 * ((test_x @ classes.T).argmax(1) == test_y).double().mean().item()
    for k, ids in metrics["shots"].items():
        assert metrics["accuracy"]["zeroshot"][k] == pytest.approx(zs)
        y = torch.tensor([list(COLORS).index(Path(p).parent.name) for p in ids])
        assert torch.bincount(y, minlength=3).tolist() == [int(k)] * 3
        clf = probe.fit_logistic(embed([data / p for p in ids]), y, 1.0, 3)
        assert metrics["accuracy"]["probe"][k] == pytest.approx(100.0 * (clf.predict(test_x) == test_y).double().mean())
