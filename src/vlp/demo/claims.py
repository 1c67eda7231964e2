"""The survey's claims about the architecture families, checked against a taxonomy run's numbers.

Each check states the claim, the measured numbers it rests on, and whether they agree. The
claims (from the survey and the papers it summarizes, e.g. ViLT's comparison of visual embedders):

1. dual encoders are fast at retrieval (embeddings are precomputed; one dot product per image);
2. but shallow for reasoning tasks such as VQA (no cross-modal interaction before the head);
3. region features need an object detector (its cost is outside the model);
4. patch input is the fastest visual embedding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _fmt(value: float, unit: str = "") -> str:
    return f"{value:.2f}{unit}" if abs(value) < 10 else f"{value:.1f}{unit}"


def _by_input(rows: Sequence[Mapping[str, Any]], family: str) -> dict[str, Mapping[str, Any]]:
    return {r["input"]: r for r in rows if r.get("family") == family}


def survey_checks(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per claim that the rows can speak to: ``claim: numbers -> agrees / disagrees``."""
    lines: list[str] = []
    dual = [r for r in rows if r.get("family") == "dual encoder"]
    others = [r for r in rows if r.get("family") != "dual encoder"]
    retrieving = [r for r in others if r.get("latency_retrieval_ms") is not None]  # OFA's row retrieves nothing
    if dual and retrieving and dual[0].get("latency_retrieval_ms") is not None:
        d = dual[0]
        fastest = min(retrieving, key=lambda r: r["latency_retrieval_ms"])
        agree = d["latency_retrieval_ms"] < fastest["latency_retrieval_ms"]
        lines.append(
            f"Dual encoders are fast at retrieval: {d['model']} ranks {d.get('gallery_images', '?')} images in "
            f"{_fmt(d['latency_retrieval_ms'], ' ms')} per query, the fastest other family ({fastest['model']}) in "
            f"{_fmt(fastest['latency_retrieval_ms'], ' ms')} -> {'agrees' if agree else 'disagrees'}."
        )
    fused_vqa = [r for r in others if r.get("vqa") is not None]
    if dual and fused_vqa and dual[0].get("vqa") is not None:
        d = dual[0]
        below = sum(r["vqa"] > d["vqa"] for r in fused_vqa)
        best = max(fused_vqa, key=lambda r: r["vqa"])
        agree = below > len(fused_vqa) / 2
        lines.append(
            f"...but shallow for VQA: {d['model']} with a late-fusion head reaches {_fmt(d['vqa'])} VQA accuracy; "
            f"{below} of {len(fused_vqa)} fusion families score higher (best: {best['model']}, {_fmt(best['vqa'])}) "
            f"-> {'agrees' if agree else 'disagrees'}."
        )
    single = _by_input(rows, "single-stream")
    if "region" in single:
        r = single["region"]
        vision = r.get("latency_vision_ms")
        cost = f"its visual embedding takes {_fmt(vision, ' ms')} per image here" if vision is not None else ""
        lines.append(
            f"Region features need a detector: {r['model']} reads ShapesWorld's oracle-detector region files, so "
            f"{cost or 'its latency'} without any detection; a real bottom-up-attention Faster R-CNN adds far more "
            "per image than every model here costs, so the measured region latency is a lower bound -> agrees "
            "(not measurable here beyond that)."
        )
    timed = {k: v for k, v in single.items() if v.get("latency_vision_ms") is not None}
    if "patch" in timed and len(timed) > 1:
        ranked = sorted(timed.values(), key=lambda r: r["latency_vision_ms"])
        order = ", ".join(f"{r['input']} {_fmt(r['latency_vision_ms'], ' ms')}" for r in ranked)
        pixel = [r for r in ranked if r["input"] != "region"]
        agree = pixel[0]["input"] == "patch"
        lines.append(
            f"Patch input is the fastest visual embedding: single-stream visual embedding per image: {order} "
            f"(region without its detector) -> {'agrees' if agree else 'disagrees'} among the pixel inputs."
        )
    return lines


def taxonomy_markdown(table: str, rows: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> str:
    """``taxonomy.md``: how the table was made, the table, and the survey checks."""
    command = f"vlp bench taxonomy --budget-steps {config.get('budget_steps')}"
    if config.get("finetune_steps") is not None:
        command += f" --finetune-steps {config['finetune_steps']}"
    settings = ", ".join(f"{k}={config[k]}" for k in ("images", "image_size", "batch_size", "lr", "patch_size",
                                                      "retrieval_images", "threads") if k in config)  # fmt: skip
    lines = [
        "# Architecture families of the survey, measured",
        "",
        f"`{command}`: every family pretrained with its own objectives for the same steps on the same "
        f"ShapesWorld data, then fine-tuned for VQA and referring expressions ({settings}). Scores in percent on "
        "the test split; retrieval R@1 is the mean of text->image and image->text over the retrieval gallery; "
        "latencies are medians of single requests (batch 1, one thread) with the gallery's image side cached.",
        "",
        table,
        "",
        "## The survey's claims against these numbers",
        "",
        *(f"- {line}" for line in survey_checks(rows)),
        "",
    ]
    return "\n".join(lines)


__all__ = ["survey_checks", "taxonomy_markdown"]
