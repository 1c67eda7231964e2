"""``run_demo``: the whole toolkit on one page, from an empty folder to ``report.md``.

Steps (each printed with its wall and CPU time):

1. generate ShapesWorld (captions, VQA, RefCOCO and COCO-instances formats);
2. train a WordPiece tokenizer on its text;
3. pretrain a tiny ALBEF-style model with ITC + ITM + MLM (``recipes/albef-demo.yaml``) and save it
   with ``save_pretrained`` (``OUT/model``, usable with ``vlp eval ... --model OUT/model``);
4. straight from pretraining: image-text retrieval (dual side), zero-shot classification with prompt
   templates, zero-shot heat maps;
5. fine-tune from the pretrained weights and evaluate: VQA, referring expressions, captioning;
6. draw the pictures and write ``report.md`` + ``results.json``.

Everything runs in this process through the Python APIs (no subprocesses). Output folder layout:
``world/`` (the data), ``tokenizer/``, ``runs/<step>/`` (training runs with ``metrics.jsonl``),
``model/``, ``figures/*.png``, ``report.md``, ``results.json``.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlp.config import ConfigError
from vlp.demo.config import DEMO_RECIPE, DemoConfig
from vlp.demo.table import ResultRow, results_table
from vlp.demo.training import Timer, model_recipe, pretrain, torch_threads, train_shapes_tokenizer

MARKER = "demo.json"  # written first into a demo folder: a rerun may clear a folder that has it
FORMATS = ("albef", "vqa", "refcoco", "coco")
Log = Callable[[str], None]


@dataclass
class DemoResult:
    """What a demo run produced: the table rows, per-task metrics, step timings and file paths."""

    out_dir: Path
    rows: list[ResultRow]
    metrics: dict[str, Any]
    timings: list[dict[str, Any]]
    figures: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    report: Path | None = None

    def table(self) -> str:
        return results_table(self.rows)


def _prepare(out: Path) -> None:
    """Create ``out``, or clear it when an earlier demo wrote it; refuse any other non-empty folder."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ConfigError(
                f"demo --out {str(out)!r} exists, is not empty and was not written by vlp demo; "
                "pass a new or empty folder"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _generated_images(generator: str | Path, prompts: list[str], out: Path) -> Path:
    """Sample one image per prompt from a trained text-to-image folder and draw them."""
    import numpy as np

    from vlp.demo.figures import image_grid
    from vlp.generation import load_generator

    model = load_generator(generator)
    images = model.generate(prompts, samples=1, seed=0)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return image_grid([np.ascontiguousarray(p) for p in pixels], prompts, out)


def run_demo(
    out_dir: str | Path,
    quick: bool = False,
    config: DemoConfig | None = None,
    generator: str | Path | None = None,
    log: Log | None = None,
) -> DemoResult:
    """Run every demo step into ``out_dir`` and return the results (see the module docstring).

    ``quick`` uses :meth:`DemoConfig.quick` (seconds; scores near chance) unless ``config`` is given.
    ``generator``: a trained text-to-image model folder (``vlp train-generation``); its samples for a
    few test captions go into the report. ``log`` receives the progress lines (default: print).
    """
    import json

    import vlp
    from vlp.data.shapesworld import generate
    from vlp.demo import steps

    log = log or (lambda line: print(line, flush=True))
    cfg = config or (DemoConfig.quick() if quick else DemoConfig())
    out = Path(out_dir)
    _prepare(out)
    (out / MARKER).write_text(json.dumps({"config": dataclasses.asdict(cfg), "quick": quick}, indent=1), "utf-8")
    world, runs, figures_dir = out / "world", out / "runs", out / "figures"
    timer = Timer()
    rows: list[ResultRow] = []
    metrics: dict[str, Any] = {}
    examples: dict[str, list[dict[str, Any]]] = {}
    finetune_runs: dict[str, Path] = {}
    with torch_threads(cfg.threads):
        with timer.step(f"generate ShapesWorld: {cfg.images} images of {cfg.image_size}x{cfg.image_size}", log):
            info = generate(world, images=cfg.images, size=cfg.image_size, seed=cfg.seed, formats=FORMATS,
                            workers=cfg.workers)  # fmt: skip
            log(f"    splits {info['counts']}")
        with timer.step("train a WordPiece tokenizer on its captions and questions", log):
            tokenizer = train_shapes_tokenizer(world, out / "tokenizer", cfg.vocab_size)
            log(f"    vocabulary of {tokenizer.vocab_size} word pieces")
        with timer.step(f"pretrain ALBEF-tiny with ITC + ITM + MLM for {cfg.pretrain_steps} steps", log):
            recipe = model_recipe(DEMO_RECIPE, world, tokenizer, {
                "data.image_size": cfg.image_size, "model.vision.image_size": cfg.image_size,
                "model.vision.patch_size": cfg.patch_size,
                "train.steps": cfg.pretrain_steps, "train.batch_size": cfg.batch_size, "train.seed": cfg.seed,
                "optim.lr": cfg.pretrain_lr, "schedule.warmup_steps": max(1, min(100, cfg.pretrain_steps // 10)),
                "train.log_every": max(1, min(25, cfg.pretrain_steps // 10)),
            })  # fmt: skip
            model, result = pretrain(recipe, tokenizer, runs / "pretrain")
            vlp.save_pretrained(model, out / "model", tokenizer=tokenizer, overwrite=True)
            log(f"    final loss {result.loss:.3f}, {result.samples_per_s:.0f} samples/s; saved {out / 'model'}")
        pretrained = runs / "pretrain"
        zero_shot = (
            ("retrieval", "retrieval from the pretrained dual side (ITC embeddings)", steps.retrieval_step),
            ("zeroshot", "zero-shot shape and colour classification with prompt templates", steps.zeroshot_step),
            ("perception", "zero-shot heat maps (MaskCLIP-style patch-text similarity)", steps.perception_step),
        )
        for key, title, step in zero_shot:
            with timer.step(title, log):
                output = step(model, tokenizer, world, cfg)
                _collect(key, output, rows, metrics, examples, log)
        tuned = (
            ("vqa", f"fine-tune VQA ({cfg.vqa_steps} steps) and evaluate", steps.vqa_step),
            ("refexp", f"fine-tune referring expressions ({cfg.refexp_steps} steps) and evaluate", steps.refexp_step),
            ("captions", f"fine-tune captioning ({cfg.caption_steps} steps) and evaluate", steps.captioning_step),
        )
        for key, title, step in tuned:
            with timer.step(title, log):
                output = step(pretrained, tokenizer, world, cfg, runs)
                _collect(key, output, rows, metrics, examples, log)
                finetune_runs[key] = output.run_dir
        with timer.step("draw the pictures and write report.md", log):
            figures, notes = _draw(examples, pretrained, finetune_runs, figures_dir, generator, world)
    notes = weak_rows(rows) + notes
    result = DemoResult(out, rows, metrics, timer.steps, figures, notes)
    result.report = _write(result, cfg, quick)
    log("")
    log(result.table())
    total = timer.total()
    log(f"\n{total['wall_s']:.0f} s wall, {total['cpu_s']:.0f} s CPU. Report: {result.report}")
    return result


def weak_rows(rows: list[ResultRow], ratio: float = 1.5, margin: float = 3.0) -> list[str]:
    """Notes naming every score that is not clearly above its chance level: less than ``ratio`` times
    it, or less than ``2 * ratio`` times and less than ``margin`` points above it (2% against 1% is
    still next to nothing; 2% against 0.4%, over a thousand queries, is not)."""

    def weak(r: ResultRow) -> bool:
        gain = r.ratio()
        return gain is not None and (gain < ratio or (gain < 2 * ratio and r.score - r.chance < margin))

    weak = [r for r in rows if r.chance is not None and weak(r)]
    return [
        f"{r.task}, {r.metric}: {r.score:.1f} against a chance level of {r.chance:.1f} is not clearly above chance "
        "at this budget."
        for r in weak
    ]


def _collect(key: str, output: Any, rows: list, metrics: dict, examples: dict, log: Log) -> None:
    rows.extend(output.rows)
    metrics[key] = output.metrics
    if output.examples:
        examples[key] = output.examples
    for row in output.rows:
        chance = "-" if row.chance is None else f"{row.chance:.1f}"
        log(f"    {row.metric}: {row.score:.1f} (chance {chance})")


def _draw(
    examples: dict[str, list[dict[str, Any]]],
    pretrained: Path,
    finetune_runs: dict[str, Path],
    folder: Path,
    generator: str | Path | None,
    world: Path,
) -> tuple[dict[str, Path], list[str]]:
    from vlp.demo import figures as fig

    runs = {"pretraining (ITC + ITM + MLM)": pretrained}
    runs.update({f"fine-tune: {key}": path for key, path in finetune_runs.items()})
    drawn = {"loss_curves": fig.loss_curves(runs, folder / "loss_curves.png")}
    painters = {"retrieval": fig.retrieval_grid, "perception": fig.heatmap_grid, "vqa": fig.vqa_grid,
                "refexp": fig.box_grid, "captions": fig.caption_grid}  # fmt: skip
    names = {"perception": "heatmap"}
    for key, painter in painters.items():
        if examples.get(key):
            name = names.get(key, key)
            drawn[name] = painter(examples[key], folder / f"{name}.png")
    notes = []
    if generator is not None:
        from vlp.demo.steps import test_objects

        # single-object prompts in the words of ShapesWorld's captions, for objects of the test images
        objects = [o for objs in test_objects(world).values() for o in objs]
        prompts = list(dict.fromkeys(f"a {o['color']} {o['shape']}" for o in objects))[:5]
        drawn["generation"] = _generated_images(generator, prompts, folder / "generation.png")
    else:
        notes.append(
            "Text-to-image is in vlp (`vlp train-generation t2i-shapes --out RUN`, about 15 minutes on 2 CPU "
            "cores by itself), which does not fit this demo's budget; pass `vlp demo --generator RUN/model` "
            'to add its samples for a few test objects ("a red circle") to this report.'
        )
    notes.append(
        f"Everything here can be rerun piece by piece: the data is in `{world.name}/`, the pretrained model in "
        "`model/` (`vlp eval retrieval --model model --data world --dual`), the training runs with their "
        "`metrics.jsonl` in `runs/` (`vlp plot runs/pretrain`)."
    )
    return drawn, notes


def _write(result: DemoResult, cfg: DemoConfig, quick: bool) -> Path:
    from vlp.demo.report import write_report
    from vlp.tasks.common import write_json

    command = "vlp demo --out " + str(result.out_dir) + (" --quick" if quick else "")
    report = write_report(result.out_dir, result.rows, result.timings, result.figures, dataclasses.asdict(cfg),
                          result.notes, command)  # fmt: skip
    write_json(result.out_dir / "results.json", {
        "command": command,
        "python": sys.version.split()[0],
        "config": dataclasses.asdict(cfg),
        "table": [r.to_dict() for r in result.rows],
        "metrics": result.metrics,
        "timings": result.timings,
        "figures": {k: str(v) for k, v in result.figures.items()},
    })  # fmt: skip
    return report


__all__ = ["DemoResult", "run_demo"]
