"""``run_demo``: the whole toolkit on one page, from an empty folder to ``report.md``.

Steps (each printed with its wall and CPU time):

1. generate ShapesWorld (captions, VQA, RefCOCO and COCO-instances formats);
2. train a WordPiece tokenizer on its text;
3. train the image tower alone to tag the objects in each image (task ``tagging``), then pretrain a
   tiny ALBEF-style model from it with ITC + ITM + MLM (``recipes/albef-demo.yaml``) and save it
   with ``save_pretrained`` (``OUT/model``, usable with ``vlp eval ... --model OUT/model``);
4. straight from pretraining: image-text retrieval (dual side), zero-shot classification with prompt
   templates, zero-shot heat maps;
5. fine-tune from the pretrained weights and evaluate: VQA, referring expressions, captioning (shared out
   between this process and a second one once the text-to-image process is done, :mod:`vlp.demo.parallel`);
6. meanwhile, in a second process, train a small text-to-image model for ``generation_steps`` steps (or
   ``generation_seconds`` of CPU time) and draw its samples (or use a trained ``generator``);
7. draw the pictures and write ``report.md`` + ``results.json``.

Everything else runs in this process through the Python APIs. Every training and evaluation reads the
images from one decoded-image store (``data.decoded_cache``, the same pixels as decoding each time).
Output folder layout: ``world/`` (the data), ``decoded/`` (the store), ``tokenizer/``, ``runs/<step>/``
(training runs with ``metrics.jsonl``), ``model/``, ``figures/*.png``, ``report.md``, ``results.json``.
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


def run_demo(
    out_dir: str | Path,
    quick: bool = False,
    config: DemoConfig | None = None,
    generator: str | Path | None = None,
    log: Log | None = None,
) -> DemoResult:
    """Run every demo step into ``out_dir`` and return the results (see the module docstring).

    ``quick`` uses :meth:`DemoConfig.quick` (seconds; scores near chance) unless ``config`` is given.
    ``generator``: a trained text-to-image model folder (``vlp train-generation``) whose samples for a
    few test objects go into the report; without it the demo trains one (``cfg.generation_budget()``).
    ``log`` receives the progress lines (default: print).
    """
    import json

    import vlp
    from vlp.data.shapesworld import generate
    from vlp.demo import steps

    # bound to the stream of the moment: the training runs capture sys.stdout, and their progress lines must not
    # vanish into that capture
    stream = sys.stdout
    log = log or (lambda line: print(line, file=stream, flush=True))
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
        background, budget = None, cfg.generation_budget()
        if generator is None and budget is not None:
            from vlp.demo.generation import BackgroundGenerator, sample_prompts

            how_long = f"{budget['seconds']:g} CPU s" if "seconds" in budget else f"{budget['steps']:g} steps"
            log(f"    text-to-image: training t2i-shapes for {how_long} in a second process")

            # the child also draws the report's samples once trained, so the demo does not wait for them
            sample = (sample_prompts(_test_objects_list(world)), figures_dir / "generation.png",
                      cfg.generation_sample_steps)  # fmt: skip
            background = BackgroundGenerator(runs / "generation", budget, quick, sample)
        recipe = model_recipe(DEMO_RECIPE, world, tokenizer, {
            "data.image_size": cfg.image_size, "model.vision.image_size": cfg.image_size,
            "model.vision.patch_size": cfg.patch_size,
            "train.steps": cfg.pretrain_steps, "train.batch_size": cfg.batch_size, "train.seed": cfg.seed,
            "optim.lr": cfg.pretrain_lr, "schedule.warmup_steps": max(1, min(100, cfg.pretrain_steps // 10)),
            "train.log_every": max(1, min(25, cfg.pretrain_steps // 10)),
            # every image decoded once (the same pixels bit for bit); the fine-tunes inherit it from this recipe
            "data.decoded_cache": str(out / "decoded"), **cfg.recipe_overrides,
        })  # fmt: skip
        if cfg.tag_steps:
            with timer.step(f"train the image tower to tag the objects of each image ({cfg.tag_steps} steps)", log):
                output = steps.tagging_step(recipe, tokenizer, world, cfg, runs)
                _collect("tagging", output, rows, metrics, examples, log)
                recipe["train"].update(init=str(output.run_dir), init_parts=["vision"])
                finetune_runs["tagging"] = output.run_dir
        with timer.step(f"pretrain ALBEF-tiny with ITC + ITM + MLM for {cfg.pretrain_steps} steps", log):
            model, result = pretrain(recipe, tokenizer, runs / "pretrain", progress=log)
            vlp.save_pretrained(model, out / "model", tokenizer=tokenizer, overwrite=True)
            log(f"    final loss {result.loss:.3f}, {result.samples_per_s:.0f} samples/s; saved {out / 'model'}")
        pretrained = runs / "pretrain"
        zero_shot = (
            ("retrieval", "retrieval from the pretrained dual side (ITC embeddings)", steps.retrieval_step),
            ("zeroshot", "zero-shot shape and colour classification with prompt templates", steps.zeroshot_step),
            ("perception", "zero-shot heat maps (patch-text similarity)", steps.perception_step),
        )
        for key, title, step in zero_shot:
            with timer.step(title, log):
                output = step(model, tokenizer, world, cfg)
                _collect(key, output, rows, metrics, examples, log)
        # longest first: with 2 processes each job goes to whichever process is free (vlp.demo.parallel)
        tuned = (
            ("vqa", f"VQA ({cfg.vqa_steps} steps)", "vqa_step"),
            ("refexp", f"referring expressions ({cfg.refexp_steps} steps)", "refexp_step"),
            ("captions", f"captioning ({cfg.caption_steps} steps)", "captioning_step"),
        )
        side = " (in two processes)" if cfg.finetune_processes > 1 else ""
        with timer.step(f"fine-tune and evaluate {', '.join(t for _, t, _ in tuned)}{side}", log):
            from vlp.demo.parallel import run_finetunes

            outputs = run_finetunes([(title, name) for _, title, name in tuned], pretrained, tokenizer,
                                    out / "tokenizer", world, cfg, runs, cfg.finetune_processes, log,
                                    None if background is None else background.wait)  # fmt: skip
            for (key, _, _), output in zip(tuned, outputs):
                _collect(key, output, rows, metrics, examples, log)
                finetune_runs[key] = output.run_dir
        trained_for = None
        if background is not None:
            with timer.step("wait for the text-to-image model trained in the second process", log):
                generator, summary = background.result()
                if generator is None:
                    log(f"    {summary}")
                else:
                    trained_for = summary
                    log(f"    {summary['steps']} steps, {summary['cpu_seconds']:.0f} s CPU; saved {generator}")
        with timer.step("draw the pictures and write report.md", log):
            figures, notes, captions = _draw(examples, pretrained, finetune_runs, figures_dir, world,
                                             (generator, trained_for, cfg.generation_sample_steps))  # fmt: skip
    notes = weak_rows(rows) + notes
    result = DemoResult(out, rows, metrics, timer.steps, figures, notes)
    result.report = _write(result, cfg, quick, captions)
    log("")
    log(result.table())
    from vlp.demo.report import table_notes

    for note in table_notes(rows):
        log(f"  {note}")
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
    world: Path,
    generation: tuple[str | Path | None, dict[str, Any] | None, int],
) -> tuple[dict[str, Path], list[str], dict[str, str]]:
    """Every figure of the report; returns the paths, notes and figure captions that depend on the run."""
    from vlp.demo import figures as fig

    runs = {"image tower: tagging": finetune_runs["tagging"]} if "tagging" in finetune_runs else {}
    runs["pretraining (ITC + ITM + MLM)"] = pretrained
    runs.update({f"fine-tune: {key}": path for key, path in finetune_runs.items() if key != "tagging"})
    drawn = {"loss_curves": fig.loss_curves(runs, folder / "loss_curves.png")}
    painters = {"retrieval": fig.retrieval_grid, "perception": fig.heatmap_grid, "vqa": fig.vqa_grid,
                "refexp": fig.box_grid, "captions": fig.caption_grid}  # fmt: skip
    names = {"perception": "heatmap"}
    for key, painter in painters.items():
        if examples.get(key):
            name = names.get(key, key)
            drawn[name] = painter(examples[key], folder / f"{name}.png")
    notes, captions = [], {}
    generator, trained, sample_steps = generation
    if generator is not None:
        if trained is not None and trained.get("figure"):  # drawn by the process that trained the model
            drawn["generation"] = Path(trained["figure"])
        else:
            from vlp.demo.generation import generated_images, sample_prompts

            prompts = sample_prompts(_test_objects_list(world))
            drawn["generation"] = generated_images(generator, prompts, folder / "generation.png", steps=sample_steps)
        how = f"{sample_steps} DDIM steps, guidance 3, seed 0"
        if trained is not None:
            captions["generation"] = (
                f"Two samples per prompt ({how}) from a pixel-space diffusion model (recipe `t2i-shapes`) trained "
                f"on the second core during this demo for {trained['cpu_seconds']:.0f} s of CPU time "
                f"({trained['steps']} optimizer steps): colours mostly follow the prompt, shapes not yet. The full "
                "recipe (`vlp train-generation t2i-shapes`, 15 minutes on 2 cores) gets shapes partly right; pass "
                "`vlp demo --generator RUN/model` to draw from such a model."
            )
        else:
            captions["generation"] = f"Two samples per prompt ({how}) from the text-to-image model `{generator}`."
    else:
        notes.append(
            "Text-to-image is in vlp (`vlp train-generation t2i-shapes --out RUN`, 15 minutes on 2 CPU cores). "
            "This run trained none (`--generation-steps 0`): pass `vlp demo --generator RUN/model` to add a "
            'trained model\'s samples for a few test objects ("a red circle") to this report.'
        )
    notes.append(
        f"Everything here can be rerun piece by piece: the data is in `{world.name}/`, the pretrained model in "
        "`model/` (`vlp eval retrieval --model model --data world --dual`), the training runs with their "
        "`metrics.jsonl` in `runs/` (`vlp plot runs/pretrain`)."
    )
    return drawn, notes, captions


def _test_objects_list(world: Path) -> list[dict[str, Any]]:
    """Every object of the test images, in order: the text-to-image prompts are single-object prompts in the
    words of ShapesWorld's captions for some of them."""
    from vlp.demo.steps import test_objects

    return [o for objs in test_objects(world).values() for o in objs]


def _write(result: DemoResult, cfg: DemoConfig, quick: bool, captions: dict[str, str]) -> Path:
    from vlp.demo.report import write_report
    from vlp.tasks.common import write_json

    command = "vlp demo --out " + str(result.out_dir) + (" --quick" if quick else "")
    report = write_report(result.out_dir, result.rows, result.timings, result.figures, dataclasses.asdict(cfg),
                          result.notes, command, captions)  # fmt: skip
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
