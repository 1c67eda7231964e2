"""Recipe-driven training of a text-to-image model (and of a ControlNet on top of a trained one).

    vlp train-generation t2i-shapes --out RUN            # base model, ~15 min on 2 CPU cores
    vlp train-generation t2i-shapes-control --base RUN/model --out RUN2   # ControlNet, base frozen

A generation recipe is YAML with sections ``model`` (:class:`TextToImageConfig`),
``data`` (:class:`ShapesDataConfig`) and ``train`` (:class:`GenerationTrainConfig`),
plus ``base`` (a trained model folder; the recipe then trains only ``model.control``).
The run folder gets ``model/`` (weights + resolved recipe + tokenizer),
``train_log.jsonl`` (one line per ``log_every`` steps), ``summary.json``,
``samples.png``, ``tokenizer/`` (the tokenizer trained for the run) and
``checkpoints/step_N/`` (every ``checkpoint_every`` steps and at the end; written
with :class:`vlp.io.checkpoints.CheckpointManager`).

The loop is vlp's own few lines rather than :mod:`vlp.train.engine`: the data is an
endless rendered stream (no epochs), and the recipe needs a wall-clock budget
(``time_budget_minutes``) that ends the learning-rate decay on time whatever the
machine's speed, which the step-based engine does not have. A checkpoint holds
the weights, the optimizer, the EMA, the step, the budget clock used so far and
the random states of torch and of the scene stream, so ``resume=True`` continues
the run exactly where the checkpoint left it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from vlp.config import ConfigError, apply_overrides, from_dict, read_yaml, to_dict
from vlp.generation.data import ShapesDataConfig, ShapesStream, to_uint8, tokenizer_corpus
from vlp.generation.model import TextToImageConfig, TextToImageModel, load_generator, load_text_tower, save_generator
from vlp.io.checkpoints import CheckpointManager
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
    checkpoint_every: int = 500  # steps between checkpoints (one is always written at the end); 0 = only the end
    sample_prompts: list[str] = field(default_factory=list)  # drawn into samples.png at the end
    sample_steps: int = 50
    guidance: float = 3.0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "sample_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every={self.checkpoint_every}: must be >= 0 (0 = only at the end)")
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


def build_model(recipe: GenerationRecipe, tokenizer: Any = None) -> TextToImageModel:
    """The model to train: a fresh one with its tokenizer, or (``recipe.base``) the base with a new control branch.

    ``tokenizer``: use it instead of training one (a resumed run reuses the tokenizer it trained)."""
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

        if tokenizer is None:
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


def budget_text(cfg: GenerationTrainConfig) -> str:
    """What ends the run, in words: ``train.steps`` and, when set, the time budget that the lr decay follows."""
    if not cfg.time_budget_minutes:
        return f"{cfg.steps} optimizer steps (train.steps)"
    clock = "wall-clock" if cfg.budget_clock == "wall" else "CPU-time (process CPU s / threads)"
    return (
        f"at most {cfg.steps} optimizer steps (train.steps) or a {cfg.time_budget_minutes:g}-minute {clock} budget "
        "(train.time_budget_minutes), whichever ends first; the learning rate decays to its floor by then"
    )


def _rng_state(stream: ShapesStream) -> dict[str, Any]:
    """Random states as weights-only-loadable data (the numpy state holds 128-bit integers: kept as JSON text)."""
    state = {"torch": torch.get_rng_state(), "stream": json.dumps(stream.rng.bit_generator.state)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any], stream: ShapesStream) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    stream.rng.bit_generator.state = json.loads(state["stream"])


def _prepare_run(out: Path, overwrite: bool, resume: bool) -> Path | None:
    """Check the run folder against overwrite / resume; returns the checkpoint to resume from (or None)."""
    if resume:
        if overwrite:
            raise ConfigError("--resume and --overwrite: pick one (continue the run, or start it again)")
        checkpoint = CheckpointManager(out / "checkpoints").latest_valid(warn=lambda msg: print(f"warning: {msg}"))
        if checkpoint is None:
            raise ConfigError(f"--resume: {out / 'checkpoints'} holds no valid checkpoint to continue from")
        return checkpoint
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"--out {out}: folder is not empty; pass --resume to continue its run or --overwrite to replace it"
            )
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # a later --resume must not find the old run's
    out.mkdir(parents=True, exist_ok=True)
    return None


def train_generation(
    recipe: GenerationRecipe,
    out: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train ``recipe`` into the run folder ``out``; returns the summary (also written to ``summary.json``).

    ``resume``: continue from the newest checkpoint in ``out/checkpoints`` (weights, optimizer, EMA, step, budget
    used, random states); ``train.steps`` may be raised to train longer. ``log`` gets one line on what ends the run.
    """
    cfg = recipe.train
    out = Path(out)
    checkpoint = _prepare_run(out, overwrite, resume)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    tokenizer = None
    if checkpoint is not None and (out / "tokenizer").is_dir():
        from vlp.text import Tokenizer

        tokenizer = Tokenizer.load(out / "tokenizer")
    model = build_model(recipe, tokenizer).to(device)
    if checkpoint is None:
        model.tokenizer.save(out / "tokenizer")
    control = model.cfg.control
    stream = ShapesStream(recipe.data, model.tokenizer, control.kind if control else None)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    # one multi-tensor update instead of a loop over ~200 small tensors (fused kernel on CUDA)
    on_cuda = device.type == "cuda"
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, foreach=not on_cuda, fused=on_cuda
    )
    ema = [p.detach().clone() for p in params] if cfg.ema_decay else None
    checkpoints = CheckpointManager(out / "checkpoints", keep=2)
    step, used_before, start_step = 0, 0.0, 0
    rng_state = None
    if checkpoint is not None:
        weights, state, ema_weights = checkpoints.load(checkpoint)
        model.load_state_dict(weights, strict=True)
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            if ema_weights is None:
                raise ConfigError(f"{checkpoint}: holds no ema.safetensors but train.ema_decay={cfg.ema_decay}")
            for e, name in zip(ema, names):
                e.copy_(ema_weights[name])
        step = start_step = int(state["step"])
        used_before = float(state["budget_used_s"])
        rng_state = state["rng"]
    resolved = dataclasses.replace(recipe, model=model.cfg)
    (out / "recipe.yaml").write_text(yaml.safe_dump(to_dict(resolved), sort_keys=False), encoding="utf-8")
    if log is not None:
        log(f"train-generation: {budget_text(cfg)}" + (f"; resuming at step {step}" if checkpoint else ""))
    bar = None
    if progress:
        from tqdm import tqdm

        # the total is train.steps, the most the run takes; a time budget may end it sooner (shown as "budget")
        bar = tqdm(total=cfg.steps, initial=step, desc="train-generation", unit="step", dynamic_ncols=True)
    budget = cfg.time_budget_minutes * 60.0
    threads = torch.get_num_threads()

    def clock() -> float:
        return time.process_time() / threads if cfg.budget_clock == "cpu" else time.perf_counter()

    def save_checkpoint() -> Path:
        state = {"optimizer": optimizer.state_dict(), "step": step, "budget_used_s": used(), "rng": _rng_state(stream)}
        ema_weights = dict(zip(names, ema)) if ema is not None else None
        return checkpoints.save(step, model.state_dict(), state, ema_weights)

    start, cpu_start = time.perf_counter(), time.process_time()
    clock_start = clock()

    def used() -> float:
        return used_before + clock() - clock_start

    log_path = out / "train_log.jsonl"
    if checkpoint is not None and log_path.is_file():  # drop lines logged after the checkpoint
        kept = [line for line in log_path.read_text(encoding="utf-8").splitlines() if json.loads(line)["step"] <= step]
        log_path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    running, stopped_by, saved_at = [], "steps", None
    if rng_state is not None:
        _restore_rng(rng_state, stream)  # last: nothing above may draw from the restored streams
    model.train()
    try:
        with open(log_path, "a" if checkpoint is not None else "w", encoding="utf-8") as log_file:
            while step < cfg.steps:
                progress_frac = max(step / cfg.steps, used() / budget if budget else 0.0)
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
                    log_file.write(json.dumps(row) + "\n")
                    log_file.flush()
                    if bar is not None:
                        postfix = {"loss": f"{row['loss']:.4f}"}
                        if budget:
                            postfix["time budget used"] = f"{used() / budget:.0%}"
                        bar.set_postfix(postfix)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    saved_at = save_checkpoint()
    except KeyboardInterrupt:
        stopped_by = "interrupted"
    finally:
        if bar is not None:
            bar.close()
    if saved_at is None or not saved_at.name.endswith(f"{step:08d}"):
        saved_at = save_checkpoint()  # where --resume continues (also after Ctrl-C)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    save_generator(model, out / "model", recipe=resolved, overwrite=True)
    summary = {
        "steps": step,
        "start_step": start_step,
        "stopped_by": stopped_by,
        "train_seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "budget_clock": cfg.budget_clock,
        "time_budget_minutes": cfg.time_budget_minutes,
        "budget_used_s": round(used(), 1),
        "steps_per_s": round((step - start_step) / seconds, 3) if seconds > 0 else None,
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "model": str(out / "model"),
        "checkpoint": str(saved_at),
    }
    if cfg.sample_prompts and stopped_by != "interrupted":
        _save_samples(model, cfg, out / "samples.png")
        summary["samples"] = str(out / "samples.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def summary_table(summary: dict[str, Any]) -> str:
    """The end-of-run block ``vlp train-generation`` prints (the same numbers are in ``summary.json``)."""
    resumed = f", resumed at step {summary['start_step']}" if summary.get("start_step") else ""
    budget = ""
    if summary.get("time_budget_minutes"):
        budget = (
            f"; {summary['budget_used_s'] / 60:.1f} min used of a {summary['time_budget_minutes']:g}-minute "
            f"{summary['budget_clock']} budget"
        )
    rate = summary.get("steps_per_s")
    rows = [
        ("steps", f"{summary['steps']} (stopped by {summary['stopped_by']}{resumed})"),
        ("time", f"{summary['train_seconds']:.1f} s wall, {summary['cpu_seconds']:.1f} s CPU on "
                 f"{summary['threads']} thread(s){budget}"),
        ("speed", f"{rate:.2f} steps/s" if rate else "-"),
        ("parameters", f"{summary['trainable_params']:,} trained of {summary['total_params']:,}"),
        ("model", summary["model"]),
        ("checkpoint", summary.get("checkpoint") or "-"),
        ("samples", summary.get("samples") or "-"),
    ]  # fmt: skip
    return "\n".join(f"{name:<12} {value}" for name, value in rows)


__all__ = [
    "GenerationRecipe",
    "GenerationTrainConfig",
    "budget_text",
    "build_model",
    "load_generation_recipe",
    "lr_factor",
    "recipe_file",
    "summary_table",
    "train_generation",
]
