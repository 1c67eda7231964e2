"""``vlp bench taxonomy``: the survey's architecture families trained alike and measured side by side.

Every family is a built-in ``-tiny`` recipe, pretrained with its own objectives on the same
ShapesWorld data for the same number of steps and batch size, with one optimizer setting for all
(AdamW, cosine schedule, the same peak rate) and the same input resolution. Then, from each
pretrained model:

- retrieval on the first ``retrieval_images`` test images: R@1 (mean of both directions) and RSUM,
  scored the family's own way (dual: embeddings; fusion + dual: ITC shortlist + ITM re-ranking;
  fusion only: ITM on every pair);
- VQA and referring expressions after ``finetune_steps`` of fine-tuning each (the dual encoder,
  which has no fusion module, gets a late-fusion MLP on its two embeddings: :mod:`vlp.demo.late_fusion`);
- parameters, and latency per retrieval query and per VQA question (:mod:`vlp.demo.latency`).

Uniform settings, applied to every family: 4x4 patches with fixed sin-cos positions for patch inputs
(ShapesWorld's small shapes get lost in 8x8 ones; learned positions start at std 0.02 and carry
little location), ITM with random negatives (many ShapesWorld captions fit many images, so ITC's
hardest negatives are often true matches and ITM with them does not learn), no random crops (they
cut out what captions name), text encoders initialized
with std ``0.02 * sqrt(768 / width)`` (BERT's 0.02 is tuned for width 768; at width 32 it makes every
sublayer ~5x weaker against the residual stream; measured on the demo's ALBEF, ITC did not leave
chance in 1000 steps), no momentum teacher (it would cost ALBEF a second forward pass per step).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlp.config import ConfigError, family_name
from vlp.demo.table import taxonomy_table
from vlp.demo.training import Timer, count_parameters, model_recipe, pretrain, torch_threads


@dataclass(frozen=True)
class Family:
    """One architecture family of the survey and the recipe that stands for it."""

    family: str
    input: str
    recipe: str


FAMILIES: tuple[Family, ...] = (
    Family("single-stream", "region", "uniter-tiny"),
    Family("single-stream", "grid", "pixelbert-tiny"),
    Family("single-stream", "patch", "vilt-tiny"),
    Family("dual-stream co-attention", "patch", "meter-tiny"),
    Family("dual encoder", "patch", "clip-tiny"),
    Family("fusion + dual (ALBEF)", "patch", "albef-tiny"),
    Family("mixture of modality experts (VLMo)", "patch", "vlmo-tiny"),
    Family("unified seq2seq (OFA)", "patch", "ofa-tiny"),  # every task generated: vlp.demo.taxonomy_seq2seq
)


@dataclass
class TaxonomyConfig:
    """Data, budget and measurement settings shared by every family."""

    images: int = 2000
    image_size: int = 32
    seed: int = 0
    vocab_size: int = 400
    budget_steps: int = 1000  # pretraining optimizer steps per family
    finetune_steps: int = 300  # per task (VQA, referring expressions) per family
    batch_size: int = 32
    lr: float = 1e-3
    head_lr: float = 2e-3
    patch_size: int = 4
    retrieval_images: int = 100  # test images in the retrieval gallery (5 captions each)
    latency_repeats: int = 20
    threads: int = 1
    location_bins: int = 64  # OFA's location tokens per coordinate (a 32-px image: half a pixel per bin)
    families: list[str] = field(default_factory=lambda: [f.recipe for f in FAMILIES])

    def __post_init__(self) -> None:
        for name in ("images", "budget_steps", "finetune_steps", "batch_size", "patch_size", "retrieval_images",
                     "latency_repeats", "threads"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"taxonomy {name}={value!r}: expected an integer >= 1")
        if not isinstance(self.location_bins, int) or self.location_bins < 2:
            raise ConfigError(f"taxonomy location_bins={self.location_bins!r}: expected an integer >= 2")
        known = {f.recipe for f in FAMILIES}
        unknown = [r for r in self.families if r not in known]
        if unknown or not self.families:
            raise ConfigError(f"taxonomy families={unknown or self.families!r}: choose from {', '.join(sorted(known))}")


def family_of(recipe: str) -> Family:
    return next(f for f in FAMILIES if f.recipe == recipe)


def uniform_overrides(recipe: dict[str, Any], cfg: TaxonomyConfig) -> dict[str, Any]:
    """The settings every family shares (see the module docstring), as dotted overrides of ``recipe``."""
    model = recipe["model"]
    out: dict[str, Any] = {
        "data.image_size": cfg.image_size,
        "data.transform.train_crop": "resize",
        "optim.lr": cfg.lr,
        "optim.module_lr": {},
        "schedule.name": "cosine",
        "schedule.warmup_steps": max(1, min(100, cfg.budget_steps // 10)),
        "train.steps": cfg.budget_steps,
        "train.batch_size": cfg.batch_size,
        "train.seed": cfg.seed,
        "train.log_every": max(1, min(25, cfg.budget_steps // 10)),
        "model.momentum": 0.0,  # ALBEF's EMA teacher would cost it a second forward pass per step
    }
    vision = model.get("vision") or {}
    if vision.get("type") in ("patch", "grid"):
        out["model.vision.image_size"] = cfg.image_size
    if vision.get("type") == "patch":
        out["model.vision.patch_size"] = cfg.patch_size
        out["model.vision.pos"] = "sincos"
    if "itm" in (recipe.get("objectives") or {}):
        out["objectives.itm.negatives"] = "random"
    text = model.get("text") or {}
    if text.get("type", "bert") == "bert" and text.get("dim"):
        out["model.text.init_std"] = round(0.02 * math.sqrt(768 / text["dim"]), 4)
    decoder = model.get("decoder") or {}
    if decoder.get("dim"):  # OFA's decoder is a BERT-family stack too: the same width rule
        out["model.decoder.init_std"] = round(0.02 * math.sqrt(768 / decoder["dim"]), 4)
    return out


def _subset_images(dataset: Any, count: int) -> Any:
    """The first ``count`` images of a retrieval dataset (``images`` mode) with their captions."""
    from vlp.data.dataset import VLDataset
    from vlp.data.sources.common import SourceIndex

    index = dataset.index
    keep = range(min(count, len(index.records)))
    texts, txt2img, img2txt = [], [], []
    for i in keep:
        img2txt.append([])
        for t in index.img2txt[i]:
            img2txt[-1].append(len(texts))
            texts.append(index.texts[t])
            txt2img.append(i)
    small = SourceIndex([index.records[i] for i in keep], texts=texts, txt2img=txt2img, img2txt=img2txt,
                        extras=dict(index.extras))  # fmt: skip
    return VLDataset(small, dataset.processor, dataset.seed)


def measure_family(
    fam: Family, world: Path, tokenizer: Any, cfg: TaxonomyConfig, runs: Path, log: Any = print
) -> dict[str, Any]:
    """Pretrain one family, then its retrieval, VQA, referring-expression scores, size and latencies."""
    from vlp.demo import taxonomy_tasks as tasks
    from vlp.demo.taxonomy_seq2seq import is_seq2seq, measure_seq2seq
    from vlp.recipe import recipe_dict

    base = recipe_dict(fam.recipe)
    if is_seq2seq(base):  # one multitask encoder-decoder: trained and scored its own way
        return measure_seq2seq(fam, world, tokenizer, cfg, runs, uniform_overrides(base, cfg), log)
    recipe = model_recipe(fam.recipe, world, tokenizer, uniform_overrides(base, cfg))
    model, result = pretrain(recipe, tokenizer, runs / fam.recipe / "pretrain")
    row: dict[str, Any] = {
        "family": fam.family, "model": fam.recipe, "input": fam.input,
        "vision": family_name(model.cfg.vision), "objectives": sorted(recipe.get("objectives") or {}),
        "params_k": count_parameters(model) / 1000, "pretrain_loss": result.loss,
        "pretrain_s": result.seconds,
    }  # fmt: skip
    log(f"    pretrained in {result.seconds:.0f} s, final loss {result.loss:.3f}; {row['params_k']:.1f}k parameters")
    row.update(tasks.retrieval(model, tokenizer, cfg, _subset_images))
    log(f"    retrieval ({row['retrieval_mode']}): R@1 {row['retrieval_r1']:.1f}, RSUM {row['retrieval_rsum']:.1f}, "
        f"{row['latency_retrieval_ms']:.2f} ms/query")  # fmt: skip
    row.update(tasks.vqa(runs / fam.recipe, tokenizer, cfg))
    log(f"    VQA ({row['vqa_head']}): {row['vqa']:.1f}, {row['latency_vqa_ms']:.2f} ms/question")
    row.update(tasks.refexp(runs / fam.recipe, tokenizer, cfg))
    log(f"    referring expressions ({row['refexp_head']}): acc@0.5 {row['refexp']:.1f}")
    return row


def chance_row(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Chance levels of the score columns: the same test data for every family, so any row's; for
    referring expressions a candidate-scoring row's (every fusion model chooses among the image's
    objects; a late-fusion box-regression row carries its own, lower chance level)."""
    # each from the first row that has it (the OFA row has no retrieval chance: it retrieves nothing)
    chance = {k: next((r[f"{k}_chance"] for r in rows if r.get(f"{k}_chance") is not None), None)
              for k in ("retrieval_r1", "retrieval_rsum", "vqa")}  # fmt: skip
    boxes = [r for r in rows if "refexp_mark" not in r and r.get("refexp_chance") is not None]
    chance["refexp"] = boxes[0]["refexp_chance"] if boxes else None
    return chance


def run_taxonomy(out_dir: str | Path, config: TaxonomyConfig | None = None, log: Any = None) -> dict[str, Any]:
    """Measure every family of ``config`` into ``out_dir``; writes ``taxonomy.md`` and ``results.json``.

    Returns ``{"rows": [...], "chance": {...}, "table": str, "config": {...}, "timings": [...]}``.
    """
    from vlp.data.shapesworld import generate
    from vlp.demo.claims import survey_checks
    from vlp.demo.training import train_shapes_tokenizer
    from vlp.tasks.common import write_json

    log = log or (lambda line: print(line, flush=True))
    cfg = config or TaxonomyConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world, runs = out / "world", out / "runs"
    timer = Timer()
    rows: list[dict[str, Any]] = []
    with torch_threads(cfg.threads):
        with timer.step(f"generate ShapesWorld: {cfg.images} images of {cfg.image_size}x{cfg.image_size}", log):
            generate(world, images=cfg.images, size=cfg.image_size, seed=cfg.seed, overwrite=True,
                     formats=("albef", "vqa", "refcoco", "regions"))  # fmt: skip
            tokenizer = train_shapes_tokenizer(world, out / "tokenizer", cfg.vocab_size)
        for recipe in cfg.families:
            fam = family_of(recipe)
            with timer.step(f"{fam.family} ({fam.input}): {recipe}", log):
                rows.append(measure_family(fam, world, tokenizer, cfg, runs, log))
            _write(out, cfg, rows, timer)  # partial results survive an interrupted run
    summary = _write(out, cfg, rows, timer)
    log("")
    log(summary["table"])
    for line in survey_checks(rows):
        log(f"- {line}")
    write_json(out / "results.json", summary)
    return summary


def _write(out: Path, cfg: TaxonomyConfig, rows: list[dict[str, Any]], timer: Timer) -> dict[str, Any]:
    from vlp.demo.claims import taxonomy_markdown
    from vlp.tasks.common import write_json

    chance = chance_row(rows)
    table = taxonomy_table(rows, chance)
    summary = {"config": dataclasses.asdict(cfg), "rows": rows, "chance": chance, "table": table,
               "timings": timer.steps}  # fmt: skip
    (out / "taxonomy.md").write_text(taxonomy_markdown(table, rows, dataclasses.asdict(cfg)), encoding="utf-8")
    write_json(out / "results.json", summary)
    return summary


def load_results(path: str | Path) -> dict[str, Any]:
    """A taxonomy ``results.json`` (to re-print or compare)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


__all__ = ["FAMILIES", "Family", "TaxonomyConfig", "measure_family", "run_taxonomy", "uniform_overrides"]
