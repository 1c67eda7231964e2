"""Recipe-driven training of a text-to-image model (and of a ControlNet on top of a trained one).

    vlp train-generation t2i-shapes --out RUN            # base model, ~15 min on 2 CPU cores
    vlp train-generation t2i-shapes-control --base RUN/model --out RUN2   # ControlNet, base frozen

A generation recipe is YAML with sections ``model`` (:class:`TextToImageConfig`),
``data`` (:class:`ShapesDataConfig`) and ``train`` (:class:`GenerationTrainConfig`),
plus ``base`` (a trained model folder; the recipe then trains only ``model.control``).
The run folder gets ``model/`` (weights + resolved recipe + tokenizer),
``train_log.jsonl`` (one line per ``log_every`` steps), ``summary.json`` and
``samples.png``.

The loop is vlp's own few lines rather than :mod:`vlp.train.engine`: the data is an
endless rendered stream (no epochs, nothing to resume), and the recipe needs a
wall-clock budget (``time_budget_minutes``) that ends the learning-rate decay on
time whatever the machine's speed, which the step-based engine does not have.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from vlp.config import ConfigError, apply_overrides, from_dict, read_yaml, to_dict
from vlp.generation.data import ShapesDataConfig, ShapesStream, to_uint8, tokenizer_corpus
from vlp.generation.model import TextToImageConfig, TextToImageModel, load_generator, load_text_tower, save_generator
from vlp.train.distributed import pick_device

RECIPE_DIR = Path(__file__).parent / "recipes"


@dataclass
class GenerationTrainConfig:
    steps: int = 3000  # optimizer steps (the most; the time budget may end the run first)
    time_budget_minutes: float = 0.0  # time budget; 0 = none. The lr schedule follows whichever ends first
    # wall: elapsed time. cpu: this process's CPU time / threads, i.e. the wall time the run would take with its
    # threads to itself (for measuring on a machine shared with other jobs)
    budget_clock: Literal["wall", "cpu"] = "wall"
    batch_size: int = 32
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    ema_decay: float = 0.999  # EMA of the weights; the saved model is the EMA. 0 = off
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    device: str = "auto"  # auto: the first CUDA device if there is one, else the CPU
    log_every: int = 25
    sample_prompts: list[str] = field(default_factory=list)  # drawn into samples.png at the end
    sample_steps: int = 50
    guidance: float = 3.0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "sample_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.budget_clock not in ("wall", "cpu"):
            raise ValueError(f"budget_clock={self.budget_clock!r}: expected 'wall' or 'cpu'")
        if self.lr <= 0 or self.time_budget_minutes < 0 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("lr must be > 0; time_budget_minutes, warmup_steps and grad_clip must be >= 0")
        if not 0 <= self.ema_decay < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"ema_decay={self.ema_decay} must lie in [0, 1), min_lr_ratio in [0, 1]")


@dataclass
class GenerationRecipe:
    model: TextToImageConfig = field(default_factory=TextToImageConfig)
    data: ShapesDataConfig = field(default_factory=ShapesDataConfig)
    train: GenerationTrainConfig = field(default_factory=GenerationTrainConfig)
    base: str = ""  # trained text-to-image folder: train only model.control on top of it (frozen)


def recipe_file(name_or_path: str | Path) -> Path:
    """A generation recipe by path or by built-in name (``vlp/generation/recipes/NAME.yaml``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path}: recipe file not found")
        return path
    builtin = RECIPE_DIR / f"{name_or_path}.yaml"
    if not builtin.is_file():
        names = ", ".join(sorted(p.stem for p in RECIPE_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown generation recipe {str(name_or_path)!r}; built-in: {names}")
    return builtin


def load_generation_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> GenerationRecipe:
    """Parse a recipe (``KEY=VALUE`` overrides applied first); errors name the file and the dotted key."""
    import vlp.text  # noqa: F401  registers text parts for model.text.type

    path = recipe_file(name_or_path)
    data = apply_overrides(read_yaml(path), overrides)
    return from_dict(GenerationRecipe, data, path.stem)


def lr_factor(progress: float, step: int, cfg: GenerationTrainConfig) -> float:
    """Linear warmup over ``warmup_steps``, then cosine from 1 to ``min_lr_ratio`` as ``progress`` goes 0 -> 1."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def build_model(recipe: GenerationRecipe) -> TextToImageModel:
    """The model to train: a fresh one with its tokenizer, or (``recipe.base``) the base with a new control branch."""
    if recipe.base:
        if recipe.model.control is None:
            raise ConfigError("base: training on top of a base model needs model.control (the branch to train)")
        model = load_generator(recipe.base)
        model.add_control(recipe.model.control)
        return model
    cfg = recipe.model
    if cfg.text_from:
        text, tokenizer = load_text_tower(cfg.text_from)
        cfg = dataclasses.replace(cfg, text=text.cfg)
        model = TextToImageModel(cfg)
        model.text.load_state_dict(text.state_dict())
    else:
        from vlp.text import Tokenizer

        tokenizer = Tokenizer.train(tokenizer_corpus(recipe.data), vocab_size=recipe.data.vocab_size)
        # the embedding table is sized by the tokenizer actually trained
        cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, vocab_size=tokenizer.vocab_size))
        model = TextToImageModel(cfg)
    model.tokenizer = tokenizer
    return model


def _save_samples(model: TextToImageModel, cfg: GenerationTrainConfig, path: Path) -> None:
    from vlp.generation.images import save_grid

    model.eval()
    images = model.generate(cfg.sample_prompts, samples=4, seed=0, steps=cfg.sample_steps, guidance=cfg.guidance)
    save_grid(to_uint8(images), rows=len(cfg.sample_prompts), path=path)


def train_generation(
    recipe: GenerationRecipe, out: str | Path, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train ``recipe`` into the run folder ``out``; returns the summary (also written to ``summary.json``)."""
    cfg = recipe.train
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out}: folder is not empty; pass --overwrite to replace the run")
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    model = build_model(recipe).to(device)
    control = model.cfg.control
    stream = ShapesStream(recipe.data, model.tokenizer, control.kind if control else None)
    params = [p for p in model.parameters() if p.requires_grad]
    # one multi-tensor update instead of a loop over ~200 small tensors (fused kernel on CUDA)
    on_cuda = device.type == "cuda"
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, foreach=not on_cuda, fused=on_cuda
    )
    ema = [p.detach().clone() for p in params] if cfg.ema_decay else None
    resolved = dataclasses.replace(recipe, model=model.cfg)
    (out / "recipe.yaml").write_text(yaml.safe_dump(to_dict(resolved), sort_keys=False), encoding="utf-8")
    bar = None
    if progress:
        from tqdm import tqdm

        # with a time budget the step count is unknown ahead: the bar counts steps and shows the budget used
        total = None if cfg.time_budget_minutes else cfg.steps
        bar = tqdm(total=total, desc="train-generation", unit="step")
    budget = cfg.time_budget_minutes * 60.0
    threads = torch.get_num_threads()

    def clock() -> float:
        return time.process_time() / threads if cfg.budget_clock == "cpu" else time.perf_counter()

    start, cpu_start = time.perf_counter(), time.process_time()
    clock_start = clock()
    log_path = out / "train_log.jsonl"
    step, running, stopped_by = 0, [], "steps"
    model.train()
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            while step < cfg.steps:
                elapsed = clock() - clock_start
                progress_frac = max(step / cfg.steps, elapsed / budget if budget else 0.0)
                if progress_frac >= 1.0:
                    stopped_by = "time budget"
                    break
                lr = cfg.lr * lr_factor(progress_frac, step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss, _ = model(stream.next_batch(cfg.batch_size).to(device))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"step {step}: loss is {loss.item()}; lower train.lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                step += 1
                if ema is not None:
                    # EMA warm-up (decay grows as (1 + n) / (10 + n)) so early weights do not dominate a short run
                    decay = min(cfg.ema_decay, (1 + step) / (10 + step))
                    torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
                running.append(loss.item())
                if bar is not None:
                    bar.update(1)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    row = {
                        "step": step,
                        "loss": sum(running) / len(running),
                        "lr": lr,
                        "elapsed_s": round(time.perf_counter() - start, 2),
                        "cpu_s": round(time.process_time() - cpu_start, 2),
                    }
                    running = []
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    if bar is not None:
                        used = f"{progress_frac:.0%}" if budget else None
                        bar.set_postfix(loss=f"{row['loss']:.4f}", **({"budget": used} if used else {}))
    except KeyboardInterrupt:
        stopped_by = "interrupted"
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    save_generator(model, out / "model", recipe=resolved, overwrite=True)
    summary = {
        "steps": step,
        "stopped_by": stopped_by,
        "train_seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "budget_clock": cfg.budget_clock,
        "steps_per_s": round(step / seconds, 3) if seconds > 0 else None,
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "model": str(out / "model"),
    }
    if cfg.sample_prompts and stopped_by != "interrupted":
        _save_samples(model, cfg, out / "samples.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


__all__ = [
    "GenerationRecipe",
    "GenerationTrainConfig",
    "build_model",
    "load_generation_recipe",
    "lr_factor",
    "recipe_file",
    "train_generation",
]
