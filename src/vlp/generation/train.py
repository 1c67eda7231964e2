"""Recipe-driven training of a text-to-image model (or of a ControlNet on top of a trained one) on vlp's
training engine, :class:`vlp.train.engine.Trainer`.

    vlp train-generation t2i-shapes --out RUN            # base model on rendered scenes, ~15 min on 2 CPU cores
    vlp train-generation t2i-shapes --data COCO --tokenizer TOK --out RUN   # any caption folder vlp reads
    vlp train-generation t2i-shapes-control --base RUN/model --out RUN2    # ControlNet, base frozen
    torchrun --standalone --nproc_per_node 8 -m vlp.cli train-generation t2i-shapes --out RUN   # DDP

A generation recipe is YAML with sections ``model`` (:class:`TextToImageConfig`), ``data``, ``train``
(the engine's :class:`~vlp.recipe.run.TrainConfig` plus the sample grid drawn at the end), ``optim`` and
``schedule`` (as in every recipe), plus ``base`` (a trained model folder: the recipe then trains only
``model.control``) and ``tokenizer``. ``data`` is either ShapesWorld rendered on the fly (no ``type``, or
``type: render``: :class:`ShapesDataConfig`) or any caption dataset of the data layer (``type: karpathy``,
``albef``, ``manifest``, ``webdataset``, ...: :class:`vlp.data.DataConfig`, read by
:func:`vlp.data.build_loader`).

Being an engine run, it has what every run has: checkpoints with an exact resume (weights, optimizer, EMA,
random states, the data position), Ctrl-C / SIGTERM writing a checkpoint before stopping, the non-finite
guard, DDP / FSDP under torchrun, a progress bar and ``metrics.jsonl``. ``train.time_budget_minutes``
(the engine's) ends the run when the budget is spent, and the lr decay follows it. The run folder also gets
``tokenizer/`` (the run's tokenizer, for ``--resume``), ``model/`` (the EMA weights, resolved recipe and
tokenizer: what ``vlp generate`` loads), ``samples.png`` and a ``summary.json`` with the generation
numbers added to the engine's.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import vlp.text  # noqa: F401  registers the text parts
from vlp.config import ConfigError, apply_overrides, from_dict, read_yaml, to_dict
from vlp.data import build_loader as data_loader
from vlp.data.config import DataConfig
from vlp.generation.data import CaptionImages, ShapesDataConfig, ShapesStream, to_uint8, tokenizer_corpus
from vlp.generation.images import save_grid
from vlp.generation.model import TextToImageConfig, TextToImageModel, load_generator, load_text_tower, save_generator
from vlp.io.folders import load_tokenizer
from vlp.recipe.run import OptimConfig, ScheduleConfig, TrainConfig
from vlp.text import Tokenizer
from vlp.train import distributed as dist_utils
from vlp.train.engine import BUDGET_STOP, Trainer
from vlp.train.launch import with_data_folder
from vlp.train.rng import seed_everything
from vlp.train.run_dir import check_run_dir

RECIPE_DIR = Path(__file__).parent / "recipes"
# what only the end-of-run sample grid uses: a resumed run may change it
SAMPLE_KEYS = ("train.sample_prompts", "train.sample_steps", "train.guidance")


@dataclass
class GenerationTrainConfig(TrainConfig):
    """The engine's ``train`` section with text-to-image defaults, plus the sample grid drawn at the end."""

    steps: int = 3000
    log_every: int = 25
    keep_checkpoints: int = 2
    ema_decay: float = 0.999  # the saved model is the EMA of the weights
    ema_warmup: bool = True
    num_workers: int = 0  # the rendered stream draws in the main process; caption folders may want more
    sample_prompts: list[str] = field(default_factory=list)  # drawn into samples.png at the end
    sample_steps: int = 50
    guidance: float = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sample_steps < 1:
            raise ValueError(f"sample_steps={self.sample_steps}: must be >= 1")


def _optim() -> OptimConfig:
    return OptimConfig(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)


def _schedule() -> ScheduleConfig:
    return ScheduleConfig(name="cosine", warmup_steps=50, min_lr_ratio=0.1)


@dataclass
class GenerationRecipe:
    model: TextToImageConfig = field(default_factory=TextToImageConfig)
    data: ShapesDataConfig | DataConfig = field(default_factory=ShapesDataConfig)
    train: GenerationTrainConfig = field(default_factory=GenerationTrainConfig)
    optim: OptimConfig = field(default_factory=_optim)
    schedule: ScheduleConfig = field(default_factory=_schedule)
    base: str = ""  # trained text-to-image folder: train only model.control on top of it (frozen)
    # tokenizer folder / tokenizer.json / vocab.txt; default: the base's, model.text_from's, or (rendered data)
    # one trained on the renderer's captions
    tokenizer: str = ""


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


def _is_rendered(section: dict[str, Any]) -> bool:
    return section.get("type", "render") == "render"


def parse_generation_recipe(data: dict[str, Any], where: str = "recipe") -> GenerationRecipe:
    """A generation recipe from plain data; errors name ``where`` and the dotted key."""
    data = dict(data)
    section = dict(data.get("data") or {})
    if _is_rendered(section):
        data["data"] = from_dict(ShapesDataConfig, section, f"{where}.data")
    else:
        # a random crop (the data layer's training default) would cut objects the caption names out of view
        section["transform"] = {"train_crop": "center", **(section.get("transform") or {})}
        data["data"] = from_dict(DataConfig, section, f"{where}.data")
    return from_dict(GenerationRecipe, data, where)


def load_generation_recipe(
    name_or_path: str | Path, overrides: list[str] | None = None, data_folder: str | None = None
) -> GenerationRecipe:
    """Parse a recipe; ``data_folder`` (``--data``) replaces its data by a caption folder whose format is
    recognised, then the ``KEY=VALUE`` overrides apply. Errors name the file and the dotted key."""
    path = recipe_file(name_or_path)
    data = read_yaml(path)
    if data_folder is not None:
        # what a caption folder keeps of a rendered-data section: the sizes and the seed
        kept = {k: v for k, v in (data.get("data") or {}).items() if k in ("image_size", "max_text_len", "seed")}
        data = with_data_folder({**data, "data": kept}, data_folder, "captions")
    return parse_generation_recipe(apply_overrides(data, overrides), path.stem)


def build_model(recipe: GenerationRecipe, tokenizer: Any = None) -> TextToImageModel:
    """The model to train, with its tokenizer attached: a fresh one, or (``recipe.base``) the base with a new
    control branch. ``tokenizer``: use it instead of making one (a resumed run reuses its own)."""
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
        tokenizer = tokenizer if tokenizer is not None else make_tokenizer(recipe)
        # the embedding table is sized by the tokenizer
        cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, vocab_size=tokenizer.vocab_size))
        model = TextToImageModel(cfg)
    model.tokenizer = tokenizer
    return model


def make_tokenizer(recipe: GenerationRecipe) -> Any:
    """``recipe.tokenizer`` when set; for rendered data, a WordPiece tokenizer trained on the renderer's
    captions (their own seed stream, so it never shifts the training scenes)."""
    if recipe.tokenizer:
        return load_tokenizer(recipe.tokenizer, "tokenizer")
    if not isinstance(recipe.data, ShapesDataConfig):
        raise ConfigError(
            f"tokenizer: empty, and data.type={recipe.data.type!r} brings no tokenizer; pass --tokenizer DIR "
            "(train one with `vlp tokenizer train --input CAPTIONS --out DIR`) or set model.text_from"
        )
    return Tokenizer.train(tokenizer_corpus(recipe.data), vocab_size=recipe.data.vocab_size)


def build_loader(recipe: GenerationRecipe, model: TextToImageModel, rank: int = 0, world_size: int = 1) -> Any:
    """The training batches: rendered scenes (with the control maps a ControlNet needs), or a caption dataset."""
    data, train = recipe.data, recipe.train
    if data.image_size != model.cfg.image_size:
        raise ConfigError(f"data.image_size={data.image_size} but the model makes {model.cfg.image_size}px images")
    if data.max_text_len > model.text.cfg.max_positions:
        raise ConfigError(
            f"data.max_text_len={data.max_text_len} exceeds the text encoder's "
            f"{model.text.cfg.max_positions} positions (model.text.max_positions)"
        )
    control = model.cfg.control
    if isinstance(data, ShapesDataConfig):
        return ShapesStream(data, model.tokenizer, control.kind if control else None, train.batch_size, rank)
    if control is not None:
        raise ConfigError(
            f"model.control ({control.kind} maps): only rendered ShapesWorld data (data.type: render) provides "
            f"control maps; data.type is {data.type!r}"
        )
    loader = data_loader(
        data, "train", model.tokenizer, train.batch_size, num_workers=train.num_workers, rank=rank,
        world_size=world_size, pin_memory=torch.cuda.is_available(),
    )  # fmt: skip
    return CaptionImages(loader, data.transform)


def budget_text(cfg: TrainConfig) -> str:
    """What ends the run, in words: ``train.steps`` and, when set, the time budget that the lr decay follows."""
    if not cfg.time_budget_minutes:
        return f"{cfg.steps} optimizer steps (train.steps)"
    clock = "wall-clock" if cfg.budget_clock == "wall" else "CPU-time (process CPU s / threads)"
    return (
        f"at most {cfg.steps} optimizer steps (train.steps) or a {cfg.time_budget_minutes:g}-minute {clock} budget "
        "(train.time_budget_minutes), whichever ends first; the learning rate decays to its floor by then"
    )


def _run_tokenizer(recipe: GenerationRecipe, out: Path, resuming: bool, info: dist_utils.DistInfo) -> Any:
    """The run's tokenizer: saved in ``out/tokenizer`` when the run starts (by rank 0, which alone trains one,
    so every rank has the same) and read back from there by other ranks and by a resumed run."""
    folder = out / "tokenizer"
    if resuming:
        return load_tokenizer(folder)
    if recipe.base or recipe.model.text_from:
        return None  # the base's or the text tower's, read from files on every rank (and saved after)
    tokenizer = None
    if info.is_main:
        tokenizer = make_tokenizer(recipe)
        tokenizer.save(folder)
    dist_utils.barrier()
    return tokenizer if tokenizer is not None else load_tokenizer(folder)


def _final_model(trainer: Trainer, model: TextToImageModel) -> TextToImageModel | None:
    """On rank 0, an unwrapped copy of the trained model with the EMA weights (None on other ranks).

    Gathering is a collective (under FSDP the weights are sharded), so every rank calls this."""
    weights = dist_utils.full_model_state(trainer.model)
    if trainer.ema is not None:
        weights.update(trainer.ema.state_dict())
    if not trainer.info.is_main:
        return None
    final = TextToImageModel(model.cfg)
    final.load_state_dict(weights, strict=True)
    final.tokenizer = model.tokenizer
    return final.eval()


def train_generation(
    recipe: GenerationRecipe,
    out: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train ``recipe`` into the run folder ``out`` on the engine; returns the summary (also in ``summary.json``).

    ``resume``: continue from the newest checkpoint in ``out/checkpoints`` (``train.steps`` and the time budget
    may be raised to train longer). ``log`` gets one line on what ends the run. Under torchrun every rank calls
    this; rank 0 writes the model, the samples and the summary, which every rank returns.
    """
    cfg = dataclasses.replace(recipe.train, progress=recipe.train.progress and progress)
    recipe = dataclasses.replace(recipe, train=cfg)
    out = Path(out)
    info = dist_utils.init_distributed(cfg.device)
    try:
        # the engine's check, here before the run's tokenizer is read back: --resume needs a checkpoint
        resuming = check_run_dir(out, resume=resume, overwrite=overwrite)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)  # before the tokenizer and the model are built
        seed_everything(cfg.seed)  # identical initial weights on every rank
        tokenizer = _run_tokenizer(recipe, out, resuming, info)
        model = build_model(recipe, tokenizer)
        loader = build_loader(recipe, model, info.rank, info.world_size)
        resolved = dataclasses.replace(recipe, model=model.cfg)
        if info.is_main and tokenizer is None:
            model.tokenizer.save(out / "tokenizer")
        if log is not None and info.is_main:
            log(f"train-generation: {budget_text(cfg)}" + ("; resuming from the newest checkpoint" if resume else ""))
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        trainer = Trainer(
            model, loader, train=cfg, optim=recipe.optim, schedule=recipe.schedule, run_dir=out,
            recipe=to_dict(resolved), resume=resume, overwrite=overwrite, dist=info, resume_may_change=SAMPLE_KEYS,
        )  # fmt: skip
        result = trainer.fit()
        final = _final_model(trainer, model)
        summary = None
        if final is not None:
            seconds = time.perf_counter() - wall_start
            summary = {
                **result.to_dict(),
                "steps": result.step,
                "stopped_by": result.stopped_by or "steps",
                "train_seconds": round(seconds, 1),
                "cpu_seconds": round(time.process_time() - cpu_start, 1),
                "budget_clock": cfg.budget_clock,
                "time_budget_minutes": cfg.time_budget_minutes,
                "budget_used_s": round(trainer.budget_used, 1),
                "steps_per_s": round((result.step - result.start_step) / seconds, 3) if seconds > 0 else None,
                "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "total_params": sum(p.numel() for p in model.parameters()),
                "threads": torch.get_num_threads(),
                "ranks": info.world_size,
                "model": str(save_generator(final, out / "model", recipe=resolved, overwrite=True)),
            }
            if cfg.sample_prompts and result.stopped_by in (None, BUDGET_STOP):
                _save_samples(final.to(info.device), cfg, out / "samples.png")
                summary["samples"] = str(out / "samples.png")
            (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        return dist_utils.broadcast_object(summary)
    finally:
        dist_utils.cleanup()


def _save_samples(model: TextToImageModel, cfg: GenerationTrainConfig, path: Path) -> None:
    images = model.generate(cfg.sample_prompts, samples=4, seed=0, steps=cfg.sample_steps, guidance=cfg.guidance)
    save_grid(to_uint8(images), rows=len(cfg.sample_prompts), path=path)


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
    "build_loader",
    "build_model",
    "load_generation_recipe",
    "make_tokenizer",
    "parse_generation_recipe",
    "recipe_file",
    "summary_table",
    "train_generation",
]
