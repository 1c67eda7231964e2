"""The taxonomy benchmark's measurements of one pretrained family: retrieval, VQA and referring
expressions (with latencies), each returning flat ``{column: value}`` entries for the results table.

Fusion models fine-tune with the tasks' own modules (:mod:`vlp.tasks.vqa`, :mod:`vlp.tasks.refexp`);
the dual encoder fine-tunes the late-fusion heads of :mod:`vlp.demo.late_fusion`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlp.demo.training import captured, finetune, run_recipe, shapes_data, task_recipe


def _task_overrides(cfg: Any, shapes_format: str, head: str) -> dict[str, Any]:
    steps = cfg.finetune_steps
    return {
        "data.options.format": shapes_format,
        "optim.lr": cfg.lr / 2,
        "optim.module_lr": {f"model.heads.{head}": cfg.head_lr},
        "schedule.name": "cosine",
        "schedule.warmup_steps": max(1, steps // 20),
        "train.steps": steps,
        "train.batch_size": cfg.batch_size,
        "train.log_every": max(1, min(25, steps // 10)),
    }


def _test_batches(model: Any, tokenizer: Any, shapes_format: str, batch_size: int, num_answers: int | None = None):
    from vlp.tasks.common import build_eval_dataset, iterate_batches

    data = shapes_data(model, shapes_format)
    dataset = build_eval_dataset(data, "test", tokenizer)
    return list(iterate_batches(dataset, tokenizer, batch_size, data.max_text_len, num_answers))


# ----------------------------------------------------------------------------- retrieval


def retrieval(model: Any, tokenizer: Any, cfg: Any, subset: Callable[[Any, int], Any]) -> dict[str, Any]:
    """R@1 (mean of both directions), RSUM and chance on the first test images; latency per query."""
    from vlp.demo.latency import QueryRanker, retrieval_latency
    from vlp.tasks.common import build_eval_dataset, has_dual, has_fusion, iterate_batches
    from vlp.tasks.retrieval import evaluate

    data = shapes_data(model, "captions", mode="images")
    dataset = subset(build_eval_dataset(data, "test", tokenizer), cfg.retrieval_images)
    two_stage = has_dual(model) and has_fusion(model)
    # BLIP's two-stage score adds the ITC similarity to ITM: robust when ITM is still weak
    metrics = evaluate(model, tokenizer, dataset, split="test", mode="auto", k=16, add_itc=two_stage)
    out = {
        "retrieval_mode": metrics["mode"] + (" + itc" if two_stage else ""),
        "retrieval_r1": (metrics["t2i_r1"] + metrics["i2t_r1"]) / 2,
        "retrieval_rsum": metrics["rsum"],
        "retrieval_r1_chance": (metrics["chance"]["t2i_r1"] + metrics["chance"]["i2t_r1"]) / 2,
        "retrieval_rsum_chance": metrics["chance"]["rsum"],
        "retrieval_metrics": {k: v for k, v in metrics.items() if k != "chance"},
    }
    if two_stage:  # the dual side alone, for comparison with the dual encoder
        dual = evaluate(model, tokenizer, dataset, split="test", mode="dual")
        out["retrieval_dual_r1"] = (dual["t2i_r1"] + dual["i2t_r1"]) / 2
    gallery = list(iterate_batches(dataset, tokenizer, 64, data.max_text_len))
    ranker = QueryRanker(model, tokenizer, gallery, "auto", k=16, max_text_len=data.max_text_len)
    queries = list(dataset.texts[:20])
    out["latency_retrieval_ms"] = 1000 * retrieval_latency(ranker, queries, repeats=max(3, cfg.latency_repeats // 2))
    out["gallery_images"] = ranker.size
    return out


# ----------------------------------------------------------------------------- VQA


def vqa(family_dir: Path, tokenizer: Any, cfg: Any) -> dict[str, Any]:
    """Fine-tune and score VQA (official accuracy vs the answer-type prior); latency per question."""
    import vlp.tasks.vqa as vqa_task
    from vlp.demo.latency import vqa_latency

    pretrained = family_dir / "pretrain"
    base = run_recipe(pretrained)
    if not _fusion_recipe(base):
        return _late_vqa(pretrained, base, tokenizer, cfg, family_dir / "vqa")
    recipe = task_recipe(base, {"type": "vqa", "mode": "classify"}, _task_overrides(cfg, "vqa", "vqa"))
    model, task, _ = finetune(recipe, pretrained, tokenizer, family_dir / "vqa")
    vocab = task["answer_vocab"]
    metrics = vqa_task.evaluate(model, tokenizer, shapes_data(model, "vqa"), split="test", method="classify",
                                answer_vocab=vocab)  # fmt: skip
    samples = _test_batches(model, tokenizer, "vqa", 1, len(vocab))[: cfg.latency_repeats]
    latency = vqa_latency(lambda b: vqa_task.answer_logits(model, b), samples, cfg.latency_repeats)
    return {"vqa": metrics["overall"], "vqa_chance": metrics["chance"]["overall"], "vqa_head": "fused [CLS]",
            "latency_vqa_ms": 1000 * latency, "latency_vision_ms": 1000 * _vision_latency(model, samples, cfg),
            "vqa_per_answer_type": metrics["per_answer_type"]}  # fmt: skip


def _vision_latency(model: Any, samples: list, cfg: Any) -> float:
    """Median seconds of the visual embedding alone (``model.image_tokens``) for one image: patch
    projection, grid CNN, or region features (already extracted: the detector is not in it)."""
    import torch

    from vlp.demo.latency import vqa_latency

    def tokens(batch: Any) -> torch.Tensor:
        return model.image_tokens(batch).tokens[:, 0]

    return vqa_latency(tokens, samples, cfg.latency_repeats)


def _fusion_recipe(recipe: dict[str, Any]) -> bool:
    fusion = (recipe.get("model") or {}).get("fusion") or {}
    return bool(fusion) and fusion.get("type") != "none"


def _train_module(module: Any, loader: Any, cfg: Any, run_dir: Path) -> None:
    """Fine-tune a late-fusion module with the training engine (same schedule as the fusion models)."""
    from vlp.recipe.run import OptimConfig, ScheduleConfig, TrainConfig
    from vlp.train.engine import Trainer

    steps = cfg.finetune_steps
    train = TrainConfig(steps=steps, batch_size=cfg.batch_size, seed=cfg.seed, device="cpu", num_workers=0,
                        log_every=max(1, min(25, steps // 10)), checkpoint_every=0, progress=False,
                        tensorboard=False)  # fmt: skip
    optim = OptimConfig(lr=cfg.lr / 2, module_lr={"head": cfg.head_lr})
    schedule = ScheduleConfig(name="cosine", warmup_steps=max(1, steps // 20))
    with captured(run_dir):
        Trainer(module, loader, train=train, optim=optim, schedule=schedule, run_dir=run_dir, overwrite=True).fit()
    module.eval()


def _late_model(pretrained: Path, tokenizer: Any, shapes_format: str, cfg: Any) -> tuple[Any, Any]:
    """The pretrained dual encoder and a train loader of ``shapes_format``."""
    from vlp.data import build_loader
    from vlp.tasks.common import load_model

    model = load_model(pretrained, tokenizer).model
    model.train()
    data = shapes_data(model, shapes_format)
    return model, build_loader(data, "train", tokenizer, cfg.batch_size)


def _late_vqa(pretrained: Path, base: dict, tokenizer: Any, cfg: Any, run_dir: Path) -> dict[str, Any]:
    from vlp.demo.late_fusion import LateFusionVQA, evaluate_vqa
    from vlp.demo.latency import vqa_latency
    from vlp.tasks.vqa import dataset_vocab
    from vlp.train.rng import seed_everything

    model, loader = _late_model(pretrained, tokenizer, "vqa", cfg)
    vocab = dataset_vocab(loader.dataset)
    seed_everything(cfg.seed)  # the new head's initial weights
    module = LateFusionVQA(model, len(vocab))
    _train_module(module, loader, cfg, run_dir)
    metrics = evaluate_vqa(module, _test_batches(model, tokenizer, "vqa", 64, len(vocab)), vocab)
    samples = _test_batches(model, tokenizer, "vqa", 1, len(vocab))[: cfg.latency_repeats]
    latency = vqa_latency(module.logits, samples, cfg.latency_repeats)
    return {"vqa": metrics["overall"], "vqa_chance": metrics["chance"]["overall"], "vqa_head": "late fusion MLP",
            "latency_vqa_ms": 1000 * latency, "latency_vision_ms": 1000 * _vision_latency(model, samples, cfg),
            "vqa_per_answer_type": metrics["per_answer_type"]}  # fmt: skip


# ----------------------------------------------------------------------------- referring expressions


def refexp(family_dir: Path, tokenizer: Any, cfg: Any) -> dict[str, Any]:
    """Fine-tune and score referring expressions: accuracy at IoU >= 0.5 and its chance level."""
    import vlp.tasks.refexp as ref_task

    pretrained = family_dir / "pretrain"
    base = run_recipe(pretrained)
    if not _fusion_recipe(base):
        from vlp.demo.late_fusion import LateFusionBox, evaluate_box
        from vlp.train.rng import seed_everything

        model, loader = _late_model(pretrained, tokenizer, "refcoco", cfg)
        seed_everything(cfg.seed)
        module = LateFusionBox(model)
        _train_module(module, loader, cfg, family_dir / "refexp")
        metrics = evaluate_box(module, _test_batches(model, tokenizer, "refcoco", 64))
        # a regressed box has a much lower chance level than choosing among the image's objects
        return {"refexp": metrics["accuracy"], "refexp_chance": metrics["chance"]["accuracy"],
                "refexp_head": "late fusion box MLP", "refexp_miou": metrics["miou"],
                "refexp_mark": f" (box regression, chance {metrics['chance']['accuracy']:.0f})"}  # fmt: skip
    region = (base["model"].get("vision") or {}).get("type") == "region"
    # region models score their detector regions; patch/grid models score the same candidates (the image's
    # annotated objects) pooled from their token map, so the two are compared on the same choice
    head = "region_score" if region else "proposal_score"
    mode = "regions" if region else "proposals"
    recipe = task_recipe(base, {"type": "refexp", "mode": mode}, _task_overrides(cfg, "refcoco", head))
    model, task, _ = finetune(recipe, pretrained, tokenizer, family_dir / "refexp")
    metrics = ref_task.evaluate(model, tokenizer, shapes_data(model, "refcoco"), split="test", mode=task["mode"])
    return {"refexp": metrics["accuracy"], "refexp_chance": metrics["chance"]["accuracy"],
            "refexp_head": "region scores" if region else "candidate-box scores",
            "refexp_miou": metrics["miou"]}  # fmt: skip


__all__ = ["refexp", "retrieval", "vqa"]
